"""Tests of rlhf_core.data: loading prompt / preference / prompt-completion datasets.

The malformed-row table below holds one JSONL line per case; each case is written after two
good rows (so the bad row is line 3 of its file) and must raise a DataError naming the file,
row 3 and the column (None for whole-row problems such as invalid JSON).
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import pytest

from rlhf_core import models
from rlhf_core.data import (
    DataError,
    load_preferences,
    load_prompt_completions,
    load_prompts,
    read_records,
    render_messages,
)

U = {"role": "user", "content": "hi there"}
A = {"role": "assistant", "content": "hello"}
A2 = {"role": "assistant", "content": "go away"}
S = {"role": "system", "content": "be kind"}
D = {"role": "developer", "content": "use tools"}
CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
T = {"role": "tool", "content": "5"}

GOOD = {
    "prompts": {"prompt": "tell me about the cat:", "answer": "4"},
    "preferences": {"prompt": "q:", "chosen": " yes.", "rejected": " no."},
    "completions": {"prompt": "q:", "completion": " yes."},
}


def j(obj: Any) -> str:
    return json.dumps(obj)


# (case id, loader, bad JSONL line, expected column, expected kind, loader kwargs)
MALFORMED: list[tuple[str, str, str, str | None, str, dict[str, Any]]] = [
    # --- prompts
    ("p-missing-column", "prompts", j({"question": "hi"}), "prompt", "missing_column", {}),
    ("p-int", "prompts", j({"prompt": 5}), "prompt", "wrong_type", {}),
    ("p-null", "prompts", j({"prompt": None}), "prompt", "wrong_type", {}),
    ("p-bool", "prompts", j({"prompt": True}), "prompt", "wrong_type", {}),
    ("p-object", "prompts", j({"prompt": U}), "prompt", "wrong_type", {}),
    ("p-empty", "prompts", j({"prompt": ""}), "prompt", "empty_text", {}),
    ("p-whitespace", "prompts", j({"prompt": "  \n\t"}), "prompt", "empty_text", {}),
    ("p-list-of-str", "prompts", j({"prompt": ["hi"]}), "prompt", "wrong_type", {}),
    ("p-list-of-list", "prompts", j({"prompt": [["user", "hi"]]}), "prompt", "wrong_type", {}),
    ("p-empty-conv", "prompts", j({"prompt": []}), "prompt", "empty_text", {}),
    ("p-no-role", "prompts", j({"prompt": [{"content": "hi"}]}), "prompt", "missing_role", {}),
    (
        "p-no-content",
        "prompts",
        j({"prompt": [{"role": "user"}]}),
        "prompt",
        "missing_content",
        {},
    ),
    (
        "p-null-content",
        "prompts",
        j({"prompt": [{"role": "user", "content": None}]}),
        "prompt",
        "missing_content",
        {},
    ),
    (
        "p-unknown-role",
        "prompts",
        j({"prompt": [{"role": "robot", "content": "x"}]}),
        "prompt",
        "unknown_role",
        {},
    ),
    (
        "p-role-not-str",
        "prompts",
        j({"prompt": [{"role": 1, "content": "x"}]}),
        "prompt",
        "wrong_type",
        {},
    ),
    (
        "p-content-not-str",
        "prompts",
        j({"prompt": [{"role": "user", "content": 5}]}),
        "prompt",
        "wrong_type",
        {},
    ),
    (
        "p-content-empty",
        "prompts",
        j({"prompt": [{"role": "user", "content": " "}]}),
        "prompt",
        "empty_text",
        {},
    ),
    ("p-user-user", "prompts", j({"prompt": [U, U]}), "prompt", "non_alternating_roles", {}),
    ("p-ends-assistant", "prompts", j({"prompt": [U, A]}), "prompt", "non_alternating_roles", {}),
    ("p-system-late", "prompts", j({"prompt": [U, S, U]}), "prompt", "non_alternating_roles", {}),
    ("p-starts-assistant", "prompts", j({"prompt": [A, U]}), "prompt", "non_alternating_roles", {}),
    (
        "p-too-long-chars",
        "prompts",
        j({"prompt": "x" * 31}),
        "prompt",
        "too_long",
        {"max_prompt_length": 30},
    ),
    ("p-invalid-json", "prompts", '{"prompt": "hi"', None, "invalid_json", {}),
    ("p-trailing-garbage", "prompts", '{"prompt": "a"} x', None, "invalid_json", {}),
    ("p-array-line", "prompts", "[1, 2]", None, "not_object", {}),
    ("p-string-line", "prompts", '"just text"', None, "not_object", {}),
    ("p-number-line", "prompts", "42", None, "not_object", {}),
    (
        "p-required-missing",
        "prompts",
        j({"prompt": "3+4="}),
        "answer",
        "missing_column",
        {"required_columns": ("answer",)},
    ),
    ("p-float", "prompts", j({"prompt": 1.5}), "prompt", "wrong_type", {}),
    (
        "p-tool-without-call",
        "prompts",
        j({"prompt": [U, A, {"role": "tool", "content": "5"}]}),
        "prompt",
        "non_alternating_roles",
        {},
    ),
    (
        "p-user-tool-calls",
        "prompts",
        j({"prompt": [{**U, "tool_calls": [CALL]}]}),
        "prompt",
        "bad_tool_call",
        {},
    ),
    (
        "p-tool-call-no-name",
        "prompts",
        j({"prompt": [U, {"role": "assistant", "tool_calls": [{"function": {}}]}, T]}),
        "prompt",
        "bad_tool_call",
        {},
    ),
    (
        "p-tool-call-args-number",
        "prompts",
        j(
            {
                "prompt": [
                    U,
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": 3}}],
                    },
                    T,
                ]
            }
        ),
        "prompt",
        "bad_tool_call",
        {},
    ),
    (
        "p-developer-late",
        "prompts",
        j({"prompt": [U, D, U]}),
        "prompt",
        "non_alternating_roles",
        {},
    ),
    ("p-tools-not-list", "prompts", j({"prompt": [U], "tools": 5}), "tools", "wrong_type", {}),
    # --- preferences
    (
        "r-missing-chosen",
        "preferences",
        j({"prompt": "q", "rejected": "b"}),
        "chosen",
        "missing_column",
        {},
    ),
    (
        "r-missing-rejected",
        "preferences",
        j({"prompt": "q", "chosen": "a"}),
        "rejected",
        "missing_column",
        {},
    ),
    (
        "r-missing-prompt",
        "preferences",
        j({"chosen": "a", "rejected": "b"}),
        "prompt",
        "missing_column",
        {},
    ),
    (
        "r-same",
        "preferences",
        j({"prompt": "q", "chosen": "a", "rejected": "a"}),
        "rejected",
        "same_pair",
        {},
    ),
    (
        "r-same-conv",
        "preferences",
        j({"prompt": [U], "chosen": [A], "rejected": [A]}),
        "rejected",
        "same_pair",
        {},
    ),
    (
        "r-chosen-null",
        "preferences",
        j({"prompt": "q", "chosen": None, "rejected": "b"}),
        "chosen",
        "wrong_type",
        {},
    ),
    (
        "r-both-empty",
        "preferences",
        j({"prompt": "q", "chosen": "", "rejected": ""}),
        "rejected",
        "same_pair",
        {},
    ),
    (
        "r-prompt-empty",
        "preferences",
        j({"prompt": " ", "chosen": "a", "rejected": "b"}),
        "prompt",
        "empty_text",
        {},
    ),
    (
        "r-rejected-int",
        "preferences",
        j({"prompt": "q", "chosen": "a", "rejected": 3}),
        "rejected",
        "wrong_type",
        {},
    ),
    (
        "r-chosen-bool",
        "preferences",
        j({"prompt": "q", "chosen": False, "rejected": "b"}),
        "chosen",
        "wrong_type",
        {},
    ),
    (
        "r-text-prompt-conv-chosen",
        "preferences",
        j({"prompt": "q", "chosen": [A], "rejected": "b"}),
        "chosen",
        "mixed_format",
        {},
    ),
    (
        "r-conv-prompt-text-chosen",
        "preferences",
        j({"prompt": [U], "chosen": "a", "rejected": [A2]}),
        "chosen",
        "mixed_format",
        {},
    ),
    (
        "r-chosen-starts-user",
        "preferences",
        j({"prompt": [U], "chosen": [U], "rejected": [A2]}),
        "chosen",
        "non_alternating_roles",
        {},
    ),
    (
        "r-rejected-system-late",
        "preferences",
        j({"prompt": [U], "chosen": [A], "rejected": [S]}),
        "rejected",
        "non_alternating_roles",
        {},
    ),
    (
        "r-chosen-unknown-role",
        "preferences",
        j({"prompt": [U], "chosen": [{"role": "bot", "content": "x"}], "rejected": [A2]}),
        "chosen",
        "unknown_role",
        {},
    ),
    (
        "r-rejected-no-content",
        "preferences",
        j({"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant"}]}),
        "rejected",
        "missing_content",
        {},
    ),
    (
        "r-prompt-too-long",
        "preferences",
        j({"prompt": "q" * 20, "chosen": "a", "rejected": "b"}),
        "prompt",
        "too_long",
        {"max_prompt_length": 19},
    ),
    (
        "r-pair-too-long",
        "preferences",
        j({"prompt": "q:", "chosen": "a" * 20, "rejected": "b"}),
        "chosen",
        "too_long",
        {"max_length": 21},
    ),
    (
        "r-implicit-no-shared",
        "preferences",
        j({"chosen": [U, A], "rejected": [{"role": "user", "content": "other"}, A2]}),
        "prompt",
        "missing_column",
        {},
    ),
    # --- prompt-completion
    ("c-missing-completion", "completions", j({"prompt": "q"}), "completion", "missing_column", {}),
    (
        "c-null-completion",
        "completions",
        j({"prompt": "q", "completion": None}),
        "completion",
        "wrong_type",
        {},
    ),
    (
        "c-completion-list-of-str",
        "completions",
        j({"prompt": [U], "completion": ["x"]}),
        "completion",
        "wrong_type",
        {},
    ),
]

LOADERS = {
    "prompts": load_prompts,
    "preferences": load_preferences,
    "completions": load_prompt_completions,
}


def test_table_is_large_enough() -> None:
    assert len(MALFORMED) >= 30
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("loader", "line", "column", "kind", "kwargs"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_row_raises_naming_file_row_column(
    tmp_path: pathlib.Path,
    loader: str,
    line: str,
    column: str | None,
    kind: str,
    kwargs: dict[str, Any],
) -> None:
    path = tmp_path / "data.jsonl"
    good = j(GOOD[loader])
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(DataError) as info:
        LOADERS[loader](path, **kwargs)
    err = info.value
    assert (err.file, err.row, err.column, err.kind) == (str(path), 3, column, kind)
    msg = str(err)
    assert msg.startswith(f"{path}: row 3")
    if column is None:
        assert "(whole row)" in msg
    else:
        assert f"column {column!r}" in msg
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_skip_counts_every_malformed_row(
    tmp_path: pathlib.Path, loader: str, caplog: pytest.LogCaptureFixture
) -> None:
    cases = [c for c in MALFORMED if c[1] == loader and not c[5]]
    path = tmp_path / "mixed.jsonl"
    lines = [j(GOOD[loader])]
    for c in cases:
        lines += [c[2], j(GOOD[loader])]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="rlhf_core.data"):
        ds = LOADERS[loader](path, on_error="skip")
    assert len(ds) == len(cases) + 1
    assert ds.rows == list(range(1, 2 * len(cases) + 2, 2))
    rep = ds.report
    assert rep.total == 2 * len(cases) + 1 and rep.kept == len(cases) + 1
    assert rep.num_skipped == len(cases)
    expected: dict[str, int] = {}
    for c in cases:
        expected[c[4]] = expected.get(c[4], 0) + 1
    assert dict(rep.skipped) == expected
    assert len(rep.examples) == min(5, len(cases)) and "row 2" in rep.examples[0]
    assert "skipped" in str(rep)
    assert any("skipped" in r.getMessage() for r in caplog.records)


def test_plain_prompts_keep_extra_columns(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        j({"prompt": "1+2=", "answer": "3"})
        + "\n\n"
        + j({"prompt": "2+2=", "answer": "4", "level": 1})
        + "\n"
    )
    ds = load_prompts(path, required_columns=("answer",))
    assert ds.prompts == ["1+2=", "2+2="]
    assert ds.rows == [1, 3]  # blank line 2 keeps line numbering
    assert ds.columns == {"answer": ["3", "4"], "level": [None, 1]}
    assert ds[1] == {"prompt": "2+2=", "answer": "4", "level": 1}
    assert ds.reward_columns([1, 0], repeat=2) == {
        "answer": ["4", "4", "3", "3"],
        "level": [1, 1, None, None],
    }
    sub = ds.select([1])
    assert sub.prompts == ["2+2="] and sub.rows == [3] and sub.columns["answer"] == ["4"]
    assert not ds.conversational and ds.messages == [None, None]
    assert str(ds.report).endswith("2 rows")
    custom = load_prompts([{"query": "x", "prompt": "extra"}], prompt_column="query")
    assert custom.prompts == ["x"] and custom.columns == {"prompt": ["extra"]}
    with pytest.raises(DataError, match="column 'query': missing column"):
        load_prompts([{"prompt": "x"}], prompt_column="query")


def test_conversational_with_builtin_chat_template() -> None:
    tok = models.load_tokenizer()
    rows = [{"prompt": [S, U], "chosen": [A], "rejected": [A2], "margin": 1.0}]
    ds = load_preferences(rows, tokenizer=tok)
    bos = tok.bos_token  # the template writes it; encoding adds it again, so the text drops it
    expected_prompt = tok.apply_chat_template([S, U], tokenize=False, add_generation_prompt=True)
    assert expected_prompt.startswith(bos)
    assert ds.prompts == [expected_prompt[len(bos) :]]
    full = tok.apply_chat_template([S, U, A], tokenize=False)
    assert ds.prompts[0] + ds.chosen[0] == full[len(bos) :]
    assert ds.chosen[0].startswith("hello") and ds.rejected[0].startswith("go away")
    assert ds.conversational and ds.columns == {"margin": [1.0]}
    prompts = load_prompts([{"prompt": [U]}], tokenizer=tok)
    assert prompts.prompts == [
        tok.apply_chat_template([U], tokenize=False, add_generation_prompt=True)[len(bos) :]
    ]
    assert prompts.messages == [[U]]


def test_token_length_limit_with_tokenizer() -> None:
    tok = models.load_tokenizer()
    n = len(tok.encode("abcdef", add_special_tokens=False))
    assert len(load_prompts([{"prompt": "abcdef"}], tokenizer=tok, max_prompt_length=n)) == 1
    with pytest.raises(DataError, match=f"{n} tokens long, over the limit of {n - 1}"):
        load_prompts([{"prompt": "abcdef"}], tokenizer=tok, max_prompt_length=n - 1)
    with pytest.raises(DataError, match="chars long"):
        load_prompts(
            [{"prompt": "abcdef"}], tokenizer=tok, max_prompt_length=3, length_unit="chars"
        )
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_prompts([{"prompt": "a"}], length_unit="tokens")


def test_conversation_without_tokenizer_uses_plain_format() -> None:
    ds = load_prompt_completions([{"prompt": [U], "completion": [A]}])
    assert ds.prompts == ["user: hi there\nassistant: "]
    assert ds.completions == ["hello\n"]
    assert render_messages([U, A]) == "user: hi there\nassistant: hello\n"


def test_implicit_prompt_from_shared_messages() -> None:
    ds = load_preferences([{"chosen": [S, U, A], "rejected": [S, U, A2]}])
    assert ds.prompts == [render_messages([S, U], add_generation_prompt=True)]
    assert ds.chosen == ["hello\n"] and ds.rejected == ["go away\n"]


def test_no_prompt_column() -> None:
    ds = load_preferences([{"chosen": "good", "rejected": "bad"}], prompt_column=None)
    assert ds.prompts == [""] and ds.chosen == ["good"]


def test_parquet_good_and_malformed(tmp_path: pathlib.Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "prompt": [[U], [U], [U]],
            "chosen": [[A], [A], [A]],
            "rejected": [[A2], [A2], [A]],
            "score": [1.0, 2.0, 3.0],
        }
    )
    path = tmp_path / "prefs.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        load_preferences(path)
    err = info.value
    assert (err.file, err.row, err.column, err.kind) == (str(path), 3, "rejected", "same_pair")
    assert "row 3 (index 2)" in str(err)
    ds = load_preferences(path, on_error="skip")
    assert len(ds) == 2 and ds.columns == {"score": [1.0, 2.0]}
    pq.write_table(pa.table({"prompt": ["a", None]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"row 2 \(index 1\), column 'prompt'.*null"):
        load_prompts(tmp_path / "p.parquet")


def _write_dataset_folder(folder: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """A folder as ``datasets.Dataset.save_to_disk`` writes it (via datasets when installed,
    else the same layout by hand: Arrow stream file + state.json)."""
    try:
        import datasets
    except ImportError:
        import pyarrow as pa

        folder.mkdir(parents=True)
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        (folder / "state.json").write_text(
            j({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None})
        )
        (folder / "dataset_info.json").write_text("{}")
        return
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))


def test_datasets_folder_and_dict(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("pyarrow")
    rows = [{"prompt": "a:", "answer": "1"}, {"prompt": "", "answer": "2"}]
    _write_dataset_folder(tmp_path / "ds", rows)
    ds = load_prompts(tmp_path / "ds", on_error="skip")
    assert ds.prompts == ["a:"] and ds.columns == {"answer": ["1"]}
    with pytest.raises(DataError, match=r"row 2 \(index 1\), column 'prompt': empty text"):
        load_prompts(tmp_path / "ds")
    # a DatasetDict folder: dataset_dict.json + one folder per split
    root = tmp_path / "dd"
    _write_dataset_folder(root / "train", rows[:1])
    _write_dataset_folder(root / "test", [{"prompt": "t:", "answer": "9"}])
    (root / "dataset_dict.json").write_text(j({"splits": ["train", "test"]}))
    assert load_prompts(root).prompts == ["a:"]
    assert load_prompts(root, split="test").prompts == ["t:"]
    with pytest.raises(DataError, match=r"no split 'valid'.*\['train', 'test'\]"):
        load_prompts(root, split="valid")
    with pytest.raises(DataError, match="holds one dataset"):
        load_prompts(tmp_path / "ds", split="train")
    (tmp_path / "notds").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_prompts(tmp_path / "notds")


def test_json_array_and_in_memory_rows(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": 3}]))
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert info.value.row == 2 and "row 2 (index 1)" in str(info.value)
    path.write_text(json.dumps([{"prompt": "a"}, "x"]))
    with pytest.raises(DataError, match="whole row.*expected a JSON object"):
        load_prompts(path)
    with pytest.raises(DataError, match=r"<list>: row 1 \(index 0\), column 'prompt'"):
        load_prompts([{"prompt": ""}])
    with pytest.raises(DataError, match="expected a dict"):
        load_prompts([{"prompt": "a"}, ["x"]])  # type: ignore[list-item]


def test_source_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_prompts(tmp_path / "x.csv")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": ""}\n')
    with pytest.raises(DataError, match=r"no usable rows.*1 empty_text"):
        load_prompts(tmp_path / "bad.jsonl", on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        load_prompts([{"prompt": "a"}], on_error="ignore")  # type: ignore[arg-type]


def test_read_records_reports_errors_per_row(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\nnope\n')
    source, recs, note = read_records(path)
    assert source == str(path) and note == ""
    assert recs[0] == (1, {"a": 1}, None)
    assert recs[1][0] == 2 and isinstance(recs[1][2], DataError)


def test_chat_prompt_encodes_with_a_single_bos() -> None:
    """A template-rendered prompt, encoded as trainers encode it, starts with exactly one BOS."""
    tok = models.load_tokenizer()
    rows = [{"prompt": [{"role": "user", "content": "hi"}]}]
    ds = load_prompts(rows, tokenizer=tok)
    text = ds.prompts[0]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert ids[1] != tok.bos_token_id, f"double BOS in {tok.convert_ids_to_tokens(ids[:3])}"


# --------------------------------------------------------------------------------------------
# JSON Lines: lines end at \n only; invalid UTF-8 named and skippable (issue 18, item 7)


def test_jsonl_splits_rows_on_newline_only(tmp_path: pathlib.Path) -> None:
    texts = ["a\u2028b", "c\u2029d", "e\u0085f", "g\x0ch", "i\x1cj"]  # str.splitlines splits all
    path = tmp_path / "p.jsonl"
    body = "".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\n" for t in texts)
    path.write_bytes(body.replace("\n", "\r\n", 1).encode("utf-8"))  # one CRLF line too
    ds = load_prompts(path)
    assert ds.prompts == texts and ds.rows == [1, 2, 3, 4, 5]
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert load_prompts(tmp_path / "bom.jsonl").prompts == texts


def test_invalid_utf8_names_row_and_byte_offset_and_can_be_skipped(
    tmp_path: pathlib.Path,
) -> None:
    good = j({"prompt": "ok"}).encode()
    bad = b'{"prompt": "caf\xe9"}'
    path = tmp_path / "p.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n" + good + b"\n")
    with pytest.raises(DataError) as info:
        load_prompts(path)
    err = info.value
    assert (err.file, err.row, err.column, err.kind) == (str(path), 2, None, "invalid_utf8")
    offset = len(good) + 1 + bad.index(b"\xe9")
    assert f"byte 0xe9 at byte offset {offset} of the file" in str(err)
    assert str(err).startswith(f"{path}: row 2 (whole row): invalid UTF-8")
    ds = load_prompts(path, on_error="skip")
    assert ds.rows == [1, 3] and dict(ds.report.skipped) == {"invalid_utf8": 1}
    arr = tmp_path / "a.json"
    arr.write_bytes(b'[{"prompt": "x\xff"}]')
    with pytest.raises(DataError, match="invalid UTF-8: byte 0xff at byte offset 14"):
        load_prompts(arr)


# --------------------------------------------------------------------------------------------
# roles, tool calls, templates


@pytest.fixture(scope="module")
def chat_tok() -> Any:
    """A byte-level tokenizer with a ChatML template that renders tools and tool calls."""
    from rlhf_core.testing.hf_cache import byte_tokenizer

    return byte_tokenizer()


def test_tool_calling_conversation_renders_with_the_template(chat_tok: Any) -> None:
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    call = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    row = {"prompt": [D, U, call, T], "tools": [tool], "answer": "5"}
    ds = load_prompts([row], tokenizer=chat_tok)
    text = ds.prompts[0]
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "add"' in text
    assert "<|im_start|>developer\nuse tools<|im_end|>" in text
    assert '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>' in text
    assert text.endswith("<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n")
    assert ds.columns["tools"] == [[tool]] and ds.columns["answer"] == ["5"]
    # chat_template_kwargs reach the template
    plain = load_prompts([{"prompt": [U]}], tokenizer=chat_tok).prompts[0]
    off = load_prompts(
        [{"prompt": [U]}], tokenizer=chat_tok, chat_template_kwargs={"enable_thinking": False}
    ).prompts[0]
    assert off == plain + "<think>\n\n</think>\n\n"
    with pytest.raises(ValueError, match="chat_template_kwargs=.*no tokenizer"):
        load_prompts([{"prompt": "x"}], chat_template_kwargs={"enable_thinking": False})


def test_a_template_that_would_drop_tool_calls_is_an_error(tok: Any) -> None:
    """The built-in template renders role and content only: tool calls would vanish."""
    row = {"prompt": [U, {"role": "assistant", "content": "", "tool_calls": [CALL]}, T]}
    with pytest.raises(DataError, match="ignores the messages' tool_calls") as info:
        load_prompts([row], tokenizer=tok)
    assert info.value.kind == "template_error" and info.value.column == "prompt"
    with pytest.raises(DataError, match="tool calls and tool definitions need a chat template"):
        load_prompts([row])
    with pytest.raises(DataError, match="ignores the 'tools' column"):
        load_prompts([{"prompt": [U], "tools": [{"type": "function"}]}], tokenizer=tok)


def test_render_prompt_renders_or_raises_never_str(chat_tok: Any) -> None:
    from rlhf_core.data import render_prompt, render_prompt_completion

    assert render_prompt("plain", chat_tok) == "plain"
    assert render_prompt([U], chat_tok) == chat_tok.apply_chat_template(
        [U], tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(DataError, match=r"<prompts>: row 4, column 'prompt': expected a string"):
        render_prompt({"role": "user", "content": "hi"}, chat_tok, row=4)
    with pytest.raises(DataError, match="must end with a user message"):
        render_prompt([U, A], chat_tok)
    with pytest.raises(DataError, match="unknown role 'robot'"):
        render_prompt([{"role": "robot", "content": "x"}], chat_tok)
    p, c = render_prompt_completion([U], [A], chat_tok)
    assert c == "hello<|im_end|>\n" and p.endswith("<|im_start|>assistant\n")
    assert render_prompt_completion("q", "", chat_tok) == ("q", "")
    with pytest.raises(DataError, match="mixed_format|give two strings") as info:
        render_prompt_completion([U], "text", chat_tok)
    assert info.value.kind == "mixed_format"


# --------------------------------------------------------------------------------------------
# empty completions are answers (issue 18, item 11)


def test_an_empty_completion_is_a_valid_response(tmp_path: pathlib.Path, tok: Any) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "q:", "chosen": " yes.", "rejected": ""},
        {"prompt": "r:", "chosen": "", "rejected": " no."},
        {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": ""}]},
    ]
    path.write_text("".join(j(r) + "\n" for r in rows))
    ds = load_preferences(path, tokenizer=tok)
    assert ds.rejected[0] == "" and ds.chosen[1] == ""
    assert ds.rejected[2] == tok.eos_token  # the template closes the empty turn
    sft = load_prompt_completions([{"prompt": "q:", "completion": ""}], tokenizer=tok)
    assert sft.completions == [""]
    # encoded, an empty answer is the EOS token alone, as a policy that stopped at once
    ids, n = models.encode_prompt_completion(tok, "q:", "")
    assert ids[n:] == [tok.eos_token_id]
    ids, n = models.encode_prompt_completion(tok, ds.prompts[2], ds.rejected[2])
    assert ids[n:] == [tok.eos_token_id]  # not <eos><eos>


def test_no_second_end_of_turn_after_a_template_that_closed_it(chat_tok: Any) -> None:
    ds = load_prompt_completions([{"prompt": [U], "completion": [A]}], tokenizer=chat_tok)
    p, c = ds.prompts[0], ds.completions[0]
    assert c == "hello<|im_end|>\n"
    ids, n = models.encode_prompt_completion(chat_tok, p, c)
    tail = chat_tok.convert_ids_to_tokens(ids[n:])
    assert tail[-2:] == ["<|im_end|>", "Ċ"] and tail.count("<|im_end|>") == 1
    ids, n = models.encode_prompt_completion(chat_tok, "q", "plain answer")
    assert ids[-1] == chat_tok.eos_token_id and chat_tok.decode(ids[n:-1]) == "plain answer"
    assert models.closes_turn(chat_tok, chat_tok("x<|im_end|>\n\n")["input_ids"])
    assert not models.closes_turn(chat_tok, chat_tok("x\n")["input_ids"])
    assert not models.closes_turn(chat_tok, [])


# --------------------------------------------------------------------------------------------
# supervised fine-tuning formats


def test_sft_dataset_formats_are_told_apart_by_their_columns(
    tmp_path: pathlib.Path, chat_tok: Any
) -> None:
    from rlhf_core.data import ConversationDataset, PromptCompletionDataset, load_sft_dataset

    conv = {"messages": [S, U, A, {"role": "user", "content": "more"}, A2]}
    ds = load_sft_dataset([conv], tokenizer=chat_tok)
    assert isinstance(ds, ConversationDataset) and len(ds) == 1
    ex = ds.examples()
    assert [e["completion"] for e in ex] == ["hello<|im_end|>\n", "go away<|im_end|>\n"]
    assert ex[1]["prompt"].startswith(ex[0]["prompt"] + ex[0]["completion"])
    pc = load_sft_dataset([{"prompt": "q", "completion": "a", "level": 2}])
    assert isinstance(pc, PromptCompletionDataset) and pc.examples() == [
        {"prompt": "q", "completion": "a"}
    ]
    text = load_sft_dataset([{"text": "once upon a time"}])
    assert text.examples() == [{"prompt": "", "completion": "once upon a time"}]
    path = tmp_path / "x.jsonl"
    path.write_text("nope\n" + j({"question": "q"}) + "\n")
    with pytest.raises(DataError) as info:
        load_sft_dataset(path)
    assert info.value.row == 1 and info.value.kind == "invalid_json"  # the first row's error
    with pytest.raises(DataError, match=r"row 2.*no supervised fine-tuning format"):
        load_sft_dataset(path, on_error="skip")
    with pytest.raises(DataError, match="column 'messages': the conversation has no assistant"):
        load_sft_dataset([{"messages": [U]}], tokenizer=chat_tok)


def test_encode_conversation_masks_the_assistant_turns_only(chat_tok: Any) -> None:
    from rlhf_core.data import conversation_turns, encode_conversation

    msgs = [S, U, A, {"role": "user", "content": "more"}, A2]
    ids, mask = encode_conversation(chat_tok, msgs)
    assert ids.dtype.name == "int64" and mask.dtype == bool and ids.shape == mask.shape
    full = chat_tok.apply_chat_template(msgs, tokenize=False)
    assert chat_tok.decode(ids) == full
    assert chat_tok.decode(ids[mask]) == "hello<|im_end|>\ngo away<|im_end|>\n"
    # each turn's tokens and mask equal its (prompt, completion) pair, encoded as trainers do
    start = 0
    for prompt, completion in conversation_turns(msgs, chat_tok):
        pair, n = models.encode_prompt_completion(chat_tok, prompt, completion)
        assert list(ids[: len(pair)]) == pair
        assert not mask[start:n].any() and mask[n : len(pair)].all()
        start = len(pair)
    # the plain format (no template) ends each assistant turn with EOS
    tok_ids, tok_mask = encode_conversation(models.load_tokenizer(), [U, A])
    assert tok_ids[-1] == models.load_tokenizer().eos_token_id and tok_mask[-1]


def test_limit_stops_reading(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(j({"prompt": "a"}) + "\n" + j({"prompt": "b"}) + "\n" + "broken\n")
    ds = load_prompts(path, limit=2)
    assert ds.prompts == ["a", "b"] and ds.report.total == 2
    with pytest.raises(DataError, match="row 3"):
        load_prompts(path)
