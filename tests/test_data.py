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
