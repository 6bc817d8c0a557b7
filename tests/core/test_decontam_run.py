"""run_check end to end: planted copies, reproducibility, shards, jobs, formats, bad input, outputs, memory."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.decontam import (
    Cancelled,
    DecontamError,
    load_report,
    merge_reports,
    run_check,
    scan,
    subset_ids,
    write_outputs,
)
from core.decontam.normalize import process
from core.evalsets import load_humaneval

PLANTED = ["HumanEval/0", "HumanEval/12", "HumanEval/53", "HumanEval/101", "HumanEval/163"]
ANSWER_ONLY = ["HumanEval/2", "HumanEval/7"]  # their canonical solutions (not questions) are in the training data


def _disguise(text: str) -> str:
    """Whitespace and punctuation changes that processing removes: tabs, reflowed lines, other quotes."""
    text = text.replace("    ", "\t").replace('"""', "'''").replace(", ", " ,  ").replace(":", " :")
    return re.sub(r"\n\s*\n", "\n", text)


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


@pytest.fixture(scope="module")
def rows(humaneval):
    import textwrap as tw_module

    by_id = humaneval.by_id()
    source = Path(tw_module.__file__).read_text() + Path(json.__file__).read_text()
    # the demo data's shape: id, instruction, answer and a non-text `planted` flag
    out = [{"id": f"std-{i}", "instruction": f"Explain this code ({i}).", "answer": source[i * 700:(i + 1) * 700],
            "planted": False} for i in range(len(source) // 700)]
    for n, tid in enumerate(PLANTED):
        out.insert(3 + 7 * n, {"id": f"planted-{tid}", "instruction": _disguise(by_id[tid].prompt),
                               "answer": by_id[tid].reference[len(by_id[tid].prompt):], "planted": True})
    for tid in ANSWER_ONLY:
        out.append({"id": f"answer-{tid}", "instruction": "Complete the function.",
                    "answer": by_id[tid].reference[len(by_id[tid].prompt):], "planted": False})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def train_jsonl(tmp_path, rows) -> Path:
    return _write_jsonl(tmp_path / "train.jsonl", rows)


def _flagged(report) -> set[str]:
    return {i["task_id"] for i in report["items"] if i["contaminated"]}


@pytest.mark.parametrize("mode", ["sampled", "exhaustive", "ngram13"])
def test_every_planted_prompt_is_found_and_answers_alone_are_not_flagged(train_jsonl, rows, humaneval, mode):
    if mode == "ngram13":  # GPT-3 style: verbatim copies (punctuation changes split words differently)
        plain = [dict(r) for r in rows]
        by_id = humaneval.by_id()
        for r in plain:
            if r["id"].startswith("planted-"):
                r["instruction"] = by_id[r["id"][len("planted-"):]].prompt
        train_jsonl = _write_jsonl(train_jsonl, plain)
    report = run_check([str(train_jsonl)], [humaneval], mode=mode)
    assert _flagged(report) == set(PLANTED)
    index_of = {r["id"]: i for i, r in enumerate(rows)}
    for item in report["items"]:
        if item["task_id"] in PLANTED:
            m = item["matches"][0]
            assert m["train_id"] == f"planted-{item['task_id']}"
            assert m["train_index"] == index_of[m["train_id"]] and m["field"] == "instruction"
    assert report["summary"]["humaneval"] == {"items": 164, "contaminated": 5, "percent": round(500 / 164, 2)}


def test_match_spans_point_at_the_same_processed_text_in_raw_question_and_raw_training_field(train_jsonl, rows):
    for mode in ("sampled", "exhaustive"):
        report = run_check([str(train_jsonl)], ["humaneval"], mode=mode)
        for item in report["items"]:
            for m in item["matches"]:
                ea, eb = m["eval_span"]
                ta, tb = m["train_span"]
                raw_train = rows[m["train_index"]][m["field"]]
                assert process(item["question"][ea:eb]) == process(raw_train[ta:tb]) == m["text"]
                assert len(m["text"]) >= min(50, len(process(item["question"])))  # HumanEval/53 is 45 long
                if mode == "exhaustive":  # the planted copy holds the whole prompt: one maximal span
                    assert m["text"] == process(item["question"])
            for w in item["windows"]:
                assert process(item["question"][slice(*w["eval_span"])]) == w["text"]


def test_short_question_is_matched_whole(tmp_path):
    evals = tmp_path / "evals.jsonl"
    _write_jsonl(evals, [{"task_id": "s1", "prompt": "Reverse a string."}, {"task_id": "s2", "prompt": "Sort a list!"}])
    train = _write_jsonl(tmp_path / "t.jsonl", [{"text": "Q: reverse A STRING"}, {"text": "how to: Reverse -- a string?"}])
    report = run_check([str(train)], [f"custom={evals}"])
    s1, s2 = report["items"]
    assert s1["windows"] == [{"text": "Reverseastring", "eval_span": [0, 16], "n_rows": 1}]
    assert s1["contaminated"] and [m["train_index"] for m in s1["matches"]] == [1]
    assert not s2["contaminated"]
    assert run_check([str(train)], [f"custom={evals}"], casefold=True)["items"][0]["n_matching_rows"] == 2


def test_same_seed_gives_the_same_report_and_another_seed_other_windows(train_jsonl):
    a = run_check([str(train_jsonl)], ["humaneval"], seed=7)
    assert json.dumps(a) == json.dumps(run_check([str(train_jsonl)], ["humaneval"], seed=7))
    b = run_check([str(train_jsonl)], ["humaneval"], seed=8)
    assert a["items"][0]["windows"] != b["items"][0]["windows"]
    assert _flagged(a) == _flagged(b)


def test_report_records_method_params_fingerprint_and_evals(train_jsonl, humaneval, bench_data):
    report = run_check([str(train_jsonl)], ["humaneval", f"mbpp={bench_data / 'mbpp' / 'mbpp.jsonl'}"])
    assert report["schema"] == "tunedeck.contamination" and report["version"] == 1
    assert report["params"] == {"window": 50, "casefold": False, "mode": "sampled", "fields": None,
                                "max_matches_per_item": 20, "boilerplate_rows": 50}
    from core.fsutil import sha256_file

    f = report["train"]["files"][0]
    assert f["sha256"] == sha256_file(train_jsonl) and f["rows"] == report["train"]["rows"]
    assert [(e["benchmark"], e["n_items"]) for e in report["evals"]] == [("humaneval", 164), ("mbpp", 500)]
    assert report["summary"]["mbpp"]["items"] == 500 and report["shard"] is None
    clean, dirty = subset_ids(report, "humaneval")
    assert dirty == set(PLANTED) and len(clean) == 159
    assert all(i["question"] for i in report["items"])


def test_sharded_and_merged_equals_one_run(tmp_path, rows):
    paths = [str(_write_jsonl(tmp_path / f"part{i}.jsonl", rows[i::3])) for i in range(3)]
    whole = run_check(paths, ["humaneval"], mode="exhaustive")
    partials = [run_check(paths, ["humaneval"], mode="exhaustive", shard=(i, 2)) for i in range(2)]
    assert partials[0]["shard"] == {"index": 0, "count": 2} and partials[0]["train"]["files"][1]["rows"] is None
    merged = merge_reports(list(reversed(partials)))
    assert json.dumps(merged, sort_keys=True) == json.dumps(whole, sort_keys=True)
    with pytest.raises(DecontamError, match="exactly once"):
        merge_reports(partials[:1])


def test_two_processes_give_the_same_report_as_one(tmp_path, rows, monkeypatch):
    import core.decontam.reader as reader

    monkeypatch.setattr(reader, "UNIT_BYTES", 20_000)  # several units per file (children use it via the plan)
    path = str(_write_jsonl(tmp_path / "t.jsonl", rows * 3))
    assert len(reader.plan_units(0, path)) > 3
    one = run_check([path], ["humaneval"], jobs=1)
    two = run_check([path], ["humaneval"], jobs=2)
    assert json.dumps(one) == json.dumps(two)
    assert one["items"][0]["n_matching_rows"] == 3


def _write_format(tmp_path: Path, fmt: str, rows: list[dict]) -> str:
    if fmt == "jsonl":
        return str(_write_jsonl(tmp_path / "t.jsonl", rows))
    if fmt == "json":
        (tmp_path / "t.json").write_text(json.dumps(rows))
        return str(tmp_path / "t.json")
    if fmt == "csv":
        with open(tmp_path / "t.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return str(tmp_path / "t.csv")
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if fmt == "parquet":
        ds.to_parquet(str(tmp_path / "t.parquet"))
        return str(tmp_path / "t.parquet")
    ds.save_to_disk(str(tmp_path / "saved"))
    return str(tmp_path / "saved")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "saved"])
def test_all_input_formats_find_the_planted_rows_and_write_clean_copies(tmp_path, rows, humaneval, fmt):
    path = _write_format(tmp_path, fmt, rows)
    report, flagged = scan([path], [humaneval])
    assert _flagged(report) == set(PLANTED)
    out = tmp_path / ("clean" + ("" if fmt == "saved" else "." + fmt))
    write_outputs(report, str(tmp_path / "r.json"), train_paths=[path], flagged=flagged, clean_out=str(out))
    cleaned = run_check([str(out)], [humaneval])
    assert _flagged(cleaned) == set() and cleaned["train"]["rows"] == len(rows) - len(PLANTED)
    removed = [json.loads(line) for line in Path(f"{out}.removed.jsonl").read_text().splitlines()]
    assert sorted(r["train_id"] for r in removed) == sorted(f"planted-{t}" for t in PLANTED)
    assert all(r["matched"] == [{"benchmark": "humaneval", "task_id": r["train_id"][8:]}] for r in removed)
    ids = json.loads((tmp_path / "r.clean_ids.json").read_text())
    assert ids["benchmarks"]["humaneval"]["contaminated"] == sorted(PLANTED)
    assert load_report(tmp_path / "r.json")["summary"] == report["summary"]


def test_several_files_and_chat_messages_give_global_indices_and_message_fields(tmp_path, rows, humaneval):
    chat = [{"id": r["id"], "messages": [{"role": "system", "content": "You code."},
                                         {"role": "user", "content": r["instruction"]},
                                         {"role": "assistant", "content": r["answer"]}]} for r in rows[10:]]
    a = _write_format(tmp_path, "parquet", rows[:10])
    b = str(_write_jsonl(tmp_path / "chat.jsonl", chat))
    report = run_check([a, b], [humaneval])
    assert _flagged(report) == set(PLANTED)
    fields = {m["field"] for i in report["items"] for m in i["matches"]}
    assert "messages[1].content" in fields and "instruction" in fields
    index_of = {r["id"]: i for i, r in enumerate(rows)}
    for item in report["items"]:
        for m in item["matches"]:
            assert m["train_index"] == index_of[m["train_id"]]


def test_named_fields_limit_the_check_and_unknown_field_names_the_line(tmp_path, train_jsonl, humaneval):
    assert _flagged(run_check([str(train_jsonl)], [humaneval], fields=["answer"])) == set()
    with pytest.raises(DecontamError, match=r"train\.jsonl:1: unknown field 'prompt'"):
        run_check([str(train_jsonl)], [humaneval], fields=["prompt"])


@pytest.mark.parametrize(("content", "message"), [
    (b'{"text": "ok"}\n{"text": "broken\n', r"t\.jsonl:2: malformed JSON line"),
    (b'{"text": "ok"}\n\n{"text": "bad \xff byte"}\n', r"t\.jsonl:3: undecodable bytes"),
    (b'{"text": "ok"}\n[1, 2]\n', r"t\.jsonl:2: expected a JSON object"),
    (b"", r"t\.jsonl: file is empty"),
    (b"\n\n", r"t\.jsonl: no rows"),
])
def test_bad_input_stops_with_file_line_and_reason_and_writes_nothing(tmp_path, content, message):
    bad = tmp_path / "t.jsonl"
    bad.write_bytes(content)
    with pytest.raises(DecontamError, match=message):
        scan([str(bad)], ["humaneval"])
    with pytest.raises(DecontamError, match=r"missing\.jsonl: file not found"):
        scan([str(tmp_path / "missing.jsonl")], ["humaneval"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_bad_csv_bytes_name_the_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_bytes(b"id,text\n1,fine\n2,caf\xe9\n")
    with pytest.raises(DecontamError, match=r"t\.csv:3: undecodable bytes"):
        scan([str(bad)], ["humaneval"])


def test_failed_clean_write_leaves_no_report_or_partial_files(tmp_path, train_jsonl, humaneval):
    report, flagged = scan([str(train_jsonl), str(train_jsonl)], [humaneval])
    with pytest.raises(DecontamError, match="names repeat"):
        write_outputs(report, str(tmp_path / "r.json"), train_paths=[str(train_jsonl)] * 2, flagged=flagged,
                      clean_out=str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_progress_is_reported_in_bytes_and_cancel_stops_with_cancelled(tmp_path, rows, monkeypatch):
    import core.decontam.reader as reader
    import core.decontam.run as run

    monkeypatch.setattr(run, "PROGRESS_BYTES", 100_000)
    monkeypatch.setattr(reader, "READ_BYTES", 64_000)
    path = str(_write_jsonl(tmp_path / "t.jsonl", rows * 40))
    calls = []
    run_check([path], ["humaneval"], progress=lambda d, t: calls.append((d, t)))
    size = Path(path).stat().st_size
    assert calls[0] == (0, size) and calls[-1] == (size, size) and len(calls) > 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    cancel = threading.Event()

    def progress(done, total):
        if done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        run_check([path], ["humaneval"], progress=progress, cancel=cancel)


def test_boilerplate_windows_are_reported_and_matches_capped(tmp_path):
    evals = _write_jsonl(tmp_path / "e.jsonl", [{"task_id": "b1", "prompt": "from typing import List\n\n\ndef f(x: List[int]) -> int:\n    pass"}])
    rows = [{"text": f"from typing import List\ndef f(x: List[int]) -> int:\n    pass  # {i}"} for i in range(12)]
    train = _write_jsonl(tmp_path / "t.jsonl", rows)
    report = run_check([str(train)], [f"custom={evals}"], mode="exhaustive", boilerplate_rows=10, max_matches_per_item=4)
    item = report["items"][0]
    assert item["n_matching_rows"] == 12 and len(item["matches"]) == 4
    assert [m["train_index"] for m in item["matches"]] == [0, 1, 2, 3]
    assert [b["n_rows"] for b in item["boilerplate_windows"]] == [12]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_memory_stays_bounded_on_a_file_much_bigger_than_the_batch(tmp_path):
    """Peak RSS on a 48 MB file is within a few MB of the peak on a 6 MB file (1 MB batches): it is streamed.
    Loading the big file whole would add well over 48 MB."""
    line = json.dumps({"text": "def f(x):\n    return x * 2  # " + "padding words " * 70}) + "\n"
    count = 48 * 1024 * 1024 // len(line)
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text(line * count)
    small.write_text(line * (count // 8))
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of the big pytest process inherits it
    code = """
import json, re, sys
import core.decontam.reader as reader, core.decontam.run as run
from core.decontam import run_check
reader.READ_BYTES = 1 << 20
run.BATCH_BYTES = 1 << 20
rep = run_check([sys.argv[1]], ["humaneval"])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps([hwm, rep["train"]["rows"]]))
"""
    peaks = {}
    for p in (small, big):
        out = subprocess.run([sys.executable, "-c", code, str(p)], check=True, capture_output=True, text=True).stdout
        peaks[p.name], rows = json.loads(out)
    assert rows == count
    growth_mb = (peaks["big.jsonl"] - peaks["small.jsonl"]) / 1024
    print(f"peak RSS {peaks['small.jsonl'] / 1024:.1f} MB (6 MB file), {peaks['big.jsonl'] / 1024:.1f} MB (48 MB file)")
    assert growth_mb < 12, f"peak RSS grew by {growth_mb:.1f} MB from a 6 MB to a 48 MB file"


def test_cancel_stops_a_process_pool_run(tmp_path, rows, monkeypatch):
    import core.decontam.reader as reader

    monkeypatch.setattr(reader, "UNIT_BYTES", 50_000)
    path = str(_write_jsonl(tmp_path / "t.jsonl", rows * 10))
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        run_check([path], ["humaneval"], jobs=2, progress=progress, cancel=cancel)
    assert 0 < seen[-1] < Path(path).stat().st_size
