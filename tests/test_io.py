"""rlhf_core._io: the one home of JSON-safe values, JSONL files and atomic writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_core import _io


def test_json_safe_plain_values():
    out = _io.json_safe(
        {"a": np.float32(1.5), "b": torch.tensor(2), "c": (1, float("nan")), 3: np.bool_(True),
         "d": np.array([1, 2]), "e": float("inf")}
    )
    assert out == {"a": 1.5, "b": 2, "c": [1, None], "3": True, "d": [1, 2], "e": None}


def test_jsonl_round_trip_nan_and_line_separators(tmp_path):
    p = tmp_path / "x.jsonl"
    rows = [{"t": "a\u2028b\u2029c\x85d", "v": float("nan")}, {"t": "é", "v": 1.0}]
    _io.write_jsonl(p, rows)
    back = _io.read_jsonl(p, null_as_nan=True)
    assert back[0]["t"] == rows[0]["t"] and math.isnan(back[0]["v"]) and back[1] == rows[1]
    assert _io.read_jsonl(tmp_path / "missing.jsonl") == []


def test_torn_last_line_skipped_other_bad_lines_named(tmp_path):
    p = tmp_path / "m.jsonl"
    _io.append_jsonl(p, [{"step": 1}])
    with p.open("a") as fh:
        fh.write('{"step": 2, "lo')
    assert _io.read_jsonl(p) == [{"step": 1}]
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"m.jsonl: line 2 is not valid JSON"):
        _io.read_jsonl(p)
    p.write_text('[1, 2]\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 1 is not a JSON object"):
        _io.read_jsonl(p)


def test_atomic_write_leaves_no_temporary(tmp_path):
    p = _io.atomic_write_text(tmp_path / "sub" / "f.txt", "hello")
    assert p.read_text() == "hello" and [x.name for x in p.parent.iterdir()] == ["f.txt"]
