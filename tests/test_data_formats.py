"""File-format errors name their line (issue 16, item 7): a byte that is not UTF-8, a broken JSON line, a
column named twice (pandas would rename it and train on the first one silently)."""

from __future__ import annotations

import json

import pytest

from finfed.data.loading import read_table
from finfed.data.qa_records import read_qa_file
from finfed.errors import DataError

ROWS = [{"text": f"filing {i}", "label": "positive"} for i in range(4)]


def _jsonl(rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


@pytest.mark.parametrize("name, content, expected", [
    ("bad.csv", b"text,label\nfiling one,positive\nfiling \xff two,negative\n",
     r"line 3, column 8: byte 0xff is not UTF-8"),
    ("bad.jsonl", _jsonl(ROWS[:2]).encode() + b'{"text": "caf\xe9", "label": "x"}\n',
     r"line 3, column 14: byte 0xe9 is not UTF-8"),
    ("broken.jsonl", _jsonl([*ROWS[:2], '{"text": "three", "label"', ROWS[3]]).encode(),
     r"line 3, column 26: not valid JSON \(Expecting ':' delimiter\)"),
    ("list.jsonl", _jsonl([ROWS[0], '["text", "label"]']).encode(), r"line 2: expected a JSON object"),
    ("twice.jsonl", _jsonl([ROWS[0], '{"text": "a", "label": "b", "text": "c"}']).encode(),
     r"line 2: key\(s\) \['text'\] appear more than once"),
    ("header.csv", b"text,label,text\nfiling,positive,other\n",
     r"line 1 \(the header\) names a column more than once: 'text' in columns \[1, 3\]"),
])
def test_format_errors_name_the_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"data file {path}: {expected}"):
        read_table(path)


def test_the_message_holds_no_record_text(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(_jsonl([ROWS[0], '{"text": "SECRET-CLIENT-NAME", "label"']))
    with pytest.raises(DataError) as error:
        read_table(path)
    assert "SECRET" not in str(error.value)


def test_good_files_still_read(tmp_path):
    (tmp_path / "ok.csv").write_text("text,label\n\"a, with comma\",positive\nb,negative\n")
    (tmp_path / "ok.jsonl").write_text(_jsonl(ROWS) + "\n")  # a trailing blank line is fine
    assert read_table(tmp_path / "ok.csv")["text"].tolist() == ["a, with comma", "b"]
    assert len(read_table(tmp_path / "ok.jsonl")) == 4


def test_qa_files_name_their_line(tmp_path):
    squad = tmp_path / "squad.json"
    squad.write_text('{"data": [\n  {"title": "t",\n   "paragraphs": [}\n]}\n')
    with pytest.raises(DataError, match=rf"data file {squad}: line 3, column \d+: not valid JSON"):
        read_qa_file(squad)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"data": [\n{"title": "caf\xe9"}]}\n')
    with pytest.raises(DataError, match=rf"data file {latin}: line 2, column 15: byte 0xe9 is not UTF-8"):
        read_qa_file(latin)
    lines = tmp_path / "qa.json"
    record = {"question": "q?", "context": "ctx", "answers": {"text": ["ctx"], "answer_start": [0]}}
    lines.write_text(_jsonl([record, '{"question": "q2", "context"']))
    with pytest.raises(DataError, match=rf"data file {lines}: line 2, column \d+: not valid JSON"):
        read_qa_file(lines)
