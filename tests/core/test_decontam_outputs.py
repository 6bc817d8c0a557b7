"""Decontamination outputs are all or nothing, and a check that compared no text says so instead of "clean"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.decontam import DecontamError, scan, write_outputs
from core.evalsets import load_humaneval


@pytest.fixture
def train(tmp_path) -> Path:
    he = load_humaneval().by_id()
    rows = [{"id": f"r{i}", "text": f"row {i}: a sentence of ordinary training text."} for i in range(20)]
    rows[5]["text"] = he["HumanEval/7"].prompt
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_when_any_rename_fails_every_output_is_put_back_as_it_was(tmp_path, train, monkeypatch, fail_at):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("the previous report\n")
    (out / "clean.jsonl").write_text("the previous clean set\n")
    before = _tree(tmp_path)
    report, flagged = scan([str(train)], ["humaneval"])
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst, *args, **kwargs):  # the disk fills up at the fail_at-th new output
        if Path(src).name.endswith(".tmp"):
            calls.append(dst)
            if len(calls) == fail_at:
                raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="No space left"):
        write_outputs(report, str(out / "report.json"), train_paths=[str(train)], flagged=flagged,
                      clean_out=str(out / "clean.jsonl"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert _tree(tmp_path) == before  # old outputs intact, no new one, no temporary or set-aside file left
    # And with the disk back, everything appears.
    written = write_outputs(report, str(out / "report.json"), train_paths=[str(train)], flagged=flagged,
                            clean_out=str(out / "clean.jsonl"))
    assert {p.name for p in written} == {"clean.jsonl", "clean.jsonl.removed.jsonl", "report.json",
                                         "report.clean_ids.json"}
    assert len((out / "clean.jsonl").read_text().splitlines()) == 19


def test_a_report_path_that_is_a_directory_is_refused_before_anything_is_written(tmp_path, train):
    report, flagged = scan([str(train)], ["humaneval"])
    (tmp_path / "report.json").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(DecontamError, match=r"report\.json: is a directory"):
        write_outputs(report, str(tmp_path / "report.json"), train_paths=[str(train)], flagged=flagged,
                      clean_out=str(tmp_path / "new" / "clean.jsonl"))
    assert _tree(tmp_path) == before and not (tmp_path / "new").exists()


def test_a_very_long_flagged_row_is_copied_to_the_removed_rows_in_pieces(tmp_path, monkeypatch):
    import core.decontam.longline as longline
    import core.decontam.reader as reader

    monkeypatch.setattr(longline, "LONG_LINE_BYTES", 256)
    monkeypatch.setattr(longline, "LONG_STRING_BYTES", 100)
    monkeypatch.setattr(longline, "PIECE_BYTES", 9)
    monkeypatch.setattr(reader, "READ_BYTES", 64)
    prompt = load_humaneval().by_id()["HumanEval/7"].prompt
    rows = [{"id": "a", "text": "short"}, {"id": "long", "text": "x" * 500 + prompt + "é\U0001F600\"\\" * 40},
            {"id": "b", "text": "y" * 300}]
    train = tmp_path / "t.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, flagged = scan([str(train)], ["humaneval"])
    assert list(flagged) == [(0, 1)]
    write_outputs(report, None, train_paths=[str(train)], flagged=flagged, clean_out=str(tmp_path / "c.jsonl"))
    assert [json.loads(line)["id"] for line in (tmp_path / "c.jsonl").read_text().splitlines()] == ["a", "b"]
    removed = json.loads((tmp_path / "c.jsonl.removed.jsonl").read_text())
    assert removed["row"] == rows[1] and removed["train_id"] == "long"


def _parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_a_file_with_no_text_to_compare_is_an_error_naming_its_columns(tmp_path):
    numbers = _parquet(tmp_path / "numbers.parquet", {"x": [1, 2, 3], "y": [0.5, 1.5, 2.5]})
    with pytest.raises(DecontamError) as info:
        scan([str(numbers)], ["humaneval"])
    message = str(info.value)
    assert "numbers.parquet: no text was checked" in message and "x (int), y (float)" in message
    assert "cannot be called clean" in message and "--field" in message and "--allow-no-text" in message
    empty_strings = tmp_path / "nostr.jsonl"
    empty_strings.write_text('{"id": 1, "n": 2}\n{"id": 2, "flag": true}\n')
    with pytest.raises(DecontamError, match=r"nostr\.jsonl: no text was checked: none of its 2 rows"):
        scan([str(empty_strings)], ["humaneval"])


def test_one_textless_file_among_several_is_named(tmp_path, train):
    numbers = _parquet(tmp_path / "numbers.parquet", {"x": [1, 2, 3]})
    with pytest.raises(DecontamError, match=r"numbers\.parquet: no text was checked"):
        scan([str(train), str(numbers)], ["humaneval"])


def test_allowed_no_text_check_is_marked_loudly_in_the_report(tmp_path, train):
    numbers = _parquet(tmp_path / "numbers.parquet", {"x": [1, 2, 3]})
    report, _ = scan([str(train), str(numbers)], ["humaneval"], allow_no_text=True)
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith("NO TEXT CHECKED: ")
    assert str(numbers) in report["warnings"][0]
    files = report["train"]["files"]
    assert files[1]["text_chars"] == 0 and files[1]["text_rows"] == 0 and files[0]["text_chars"] > 500
    assert report["summary"]["humaneval"]["contaminated"] == 1  # the text that was there was still checked
