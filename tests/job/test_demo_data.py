"""The demo dataset: deterministic stdlib instruction/answer pairs with exactly the planted HumanEval prompts."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from core.evalsets import load_humaneval
from remote.job import demo_data

SUBSTRING_CHARS = 50  # OpenAI's contamination criterion: a shared 50-character substring


def humaneval_shingles() -> dict[str, str]:
    """Every 50-character substring of every HumanEval prompt -> its task id."""
    out: dict[str, str] = {}
    for task in load_humaneval().tasks:
        text = task.prompt
        for i in range(len(text) - SUBSTRING_CHARS + 1):
            out.setdefault(text[i:i + SUBSTRING_CHARS], task.task_id)
    return out


def flagged_rows(rows: list[dict]) -> dict[str, set[str]]:
    """Row id -> HumanEval task ids it shares a 50-character substring with."""
    shingles = humaneval_shingles()
    flagged: dict[str, set[str]] = {}
    for row in rows:
        text = row["instruction"] + "\n" + row["answer"]
        hits = {shingles[text[i:i + SUBSTRING_CHARS]] for i in range(len(text) - SUBSTRING_CHARS + 1)
                if text[i:i + SUBSTRING_CHARS] in shingles}
        if hits:
            flagged[row["id"]] = hits
    return flagged


def test_generate_is_deterministic_and_seed_changes_the_order() -> None:
    a = demo_data.generate(64, plant_humaneval=2, seed=1)
    assert a == demo_data.generate(64, plant_humaneval=2, seed=1)
    b = demo_data.generate(64, plant_humaneval=2, seed=2)
    assert [r["id"] for r in a] != [r["id"] for r in b]


def test_rows_ask_for_a_stdlib_function_and_answer_with_its_source() -> None:
    rows = demo_data.generate(40, plant_humaneval=0, seed=0)
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    for row in rows:
        assert set(row) == {"id", "instruction", "answer", "planted_task_id"} and row["planted_task_id"] is None
        tree = ast.parse(row["answer"])
        fn = tree.body[0]
        assert isinstance(fn, ast.FunctionDef)
        assert f"`{fn.name}(" in row["instruction"], "the instruction names the function the answer defines"
        assert ast.get_docstring(fn) is not None


def test_more_rows_than_functions_reuse_the_pool_with_unique_ids() -> None:
    pool = len(demo_data.stdlib_functions())
    rows = demo_data.generate(pool + 10, seed=0)
    assert len({r["id"] for r in rows}) == pool + 10
    assert len({r["instruction"] for r in rows}) == pool + 10, "reused functions get another phrasing"


def test_exactly_the_planted_rows_share_50_chars_with_humaneval() -> None:
    rows = demo_data.generate(256, plant_humaneval=3, seed=0)
    planted = demo_data.planted_task_ids(rows)
    assert len(planted) == 3 and len(set(planted)) == 3
    by_task = {t.task_id: t for t in load_humaneval().tasks}
    for row in rows:
        if row["planted_task_id"]:
            task = by_task[row["planted_task_id"]]
            assert task.prompt in row["instruction"]
            assert task.reference == task.prompt + row["answer"], "the answer is the canonical solution"
    flagged = flagged_rows(rows)
    expected = {r["id"]: {r["planted_task_id"]} for r in rows if r["planted_task_id"]}
    assert flagged == expected


def test_bad_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_examples"):
        demo_data.generate(0)
    with pytest.raises(ValueError, match="plant_humaneval"):
        demo_data.generate(4, plant_humaneval=5)


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    rows = demo_data.generate(8, plant_humaneval=1, seed=3)
    path = demo_data.write_jsonl(tmp_path / "demo.jsonl", rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    assert not list(tmp_path.glob(".*tmp")), "no temp file left behind"
