"""One reader of training data: every format the contamination check streams, training loads (and the other
way round), with the same rows; what one refuses, the other refuses with the same words."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import datafiles
from core.config import DataSection
from core.decontam.reader import DecontamError, iter_rows, plan_units
from remote.job.train import JobError, load_rows

ROWS = [{"instruction": "Write add", "answer": "def add(a, b): return a + b"},
        {"instruction": "Write neg, ünïcode", "answer": "def neg(a): return -a"},
        {"instruction": "Write id", "answer": "def i(a):\n    return a"}]


def write_every_format(root: Path) -> dict[str, Path]:
    files = {}
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    for name in ("data.jsonl", "data.ndjson", "lines.json"):
        files[name] = root / name
        files[name].write_text(lines, encoding="utf-8")
    files["array.json"] = root / "array.json"
    files["array.json"].write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    table = pa.Table.from_pylist(ROWS)
    files["data.parquet"] = root / "data.parquet"
    pq.write_table(table, files["data.parquet"])
    for name, delimiter in (("data.csv", ","), ("data.tsv", "\t")):
        files[name] = root / name
        with open(files[name], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROWS[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(ROWS)
    for name, new in (("stream.arrow", pa.ipc.new_stream), ("file.arrow", pa.ipc.new_file)):
        files[name] = root / name
        with new(str(files[name]), table.schema) as writer:
            writer.write_table(table)
    files["saved"] = root / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(files["saved"]))
    files["saved-dict"] = root / "saved-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(files["saved-dict"]))
    return files


def streamed(path: Path) -> list[dict]:
    return [row for unit in plan_units(0, str(path)) for _where, row, _done in iter_rows(unit)]


def test_every_format_gives_the_same_rows_to_the_contamination_check_and_to_training(tmp_path):
    files = write_every_format(tmp_path)
    for name, path in files.items():
        assert streamed(path) == ROWS, name
        assert datafiles.load_dataset([path]).to_list() == ROWS, name
        assert load_rows(DataSection(train_files=[str(path)]), recorder=None).to_list() == ROWS, name
    both = datafiles.load_dataset([files["data.ndjson"], files["data.parquet"]])
    assert both.to_list() == ROWS + ROWS


def test_what_the_check_refuses_training_refuses_with_the_same_words(tmp_path):
    (tmp_path / "notes.txt").write_text("instruction,answer\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "nosplit"))
    for name in ("notes.txt", "empty.jsonl", "missing.parquet", "nosplit"):
        path = tmp_path / name
        with pytest.raises(DecontamError) as check:
            streamed(path)
        with pytest.raises(datafiles.DataFileError) as load:
            datafiles.load_dataset([path])
        with pytest.raises(JobError) as job:
            load_rows(DataSection(train_files=[str(path)]), recorder=None)
        assert str(check.value) == str(load.value), name
        assert str(job.value) == f"data.train_files: {load.value}", name
        assert str(path) in str(load.value)
    assert "unknown training data format '.txt'" in str(load_error(tmp_path / "notes.txt"))


def load_error(path: Path) -> Exception:
    with pytest.raises(datafiles.DataFileError) as info:
        datafiles.load_dataset([path])
    return info.value


def test_a_file_that_does_not_parse_is_named_when_training_loads_it(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "answer": "b"}\n{"instruction": \n')
    error = str(load_error(bad))
    assert error.startswith(f"{bad}: cannot read it as jsonl")
