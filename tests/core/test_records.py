"""Run records: the JSONL formats, the writer and the incremental reader the streamer relies on."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.records import (
    IncrementalReader,
    JsonlWriter,
    RunPaths,
    encode_record,
    eval_record,
    event_record,
    metric_record,
    read_heartbeat,
    read_records,
    touch_heartbeat,
    validate_record,
)


def _metric(step: int, **kw) -> dict:
    values = {"attempt": 0, "epoch": step / 10, "samples": 4 * step, "tokens": 512 * step, "loss": 2.0 / (step + 1),
              "lr": 2e-5, "grad_norm": 1.0, "tokens_per_s": 900.0, "t": 100.0 + step}
    values.update(kw)
    return metric_record(step=step, **values)


def _eval(step: int = 20, **kw) -> dict:
    values = {"attempt": 0, "checkpoint": f"checkpoint-{step}", "benchmark": "mbpp", "subset": "all",
              "n_tasks": 500, "samples_per_task": 10, "temperature": 0.8, "pass_at": {1: 0.4, 10: 0.7}, "t": 5.0}
    values.update(kw)
    return eval_record(step=step, **values)


CORRUPT = (b'{"t": 1, "step": \n', b"garbage\n", b"[1, 2]\n", b'{"t": 1.0}\n', b"\xff\xfe\n")


def _file_bytes(n_records: int, corrupt_every: int) -> tuple[bytes, list[dict], list[int]]:
    """A metrics file with corrupt and blank lines mixed in; its records and the corrupt lines' numbers."""
    out, records, corrupt_lines = [], [], []
    for i in range(n_records):
        line_no = len(out) + 1
        if corrupt_every and i % corrupt_every == corrupt_every - 1:
            out.append(CORRUPT[i % len(CORRUPT)])
            corrupt_lines.append(line_no)
        elif i % 13 == 5:
            out.append(b"\n")  # blank lines are skipped, not corrupt
        else:
            rec = _metric(i, loss=float("nan") if i % 7 == 0 else 1.0 / (i + 1))
            records.append(json.loads(encode_record(rec)))
            out.append(encode_record(rec))
    return b"".join(out), records, corrupt_lines


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------------------------- reading


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 60), corrupt_every=st.sampled_from([0, 4, 9]),
       cuts=st.lists(st.integers(0, 20_000), max_size=40))
def test_any_chunking_yields_exactly_the_records_of_a_whole_read(n, corrupt_every, cuts):
    data, expected, corrupt_lines = _file_bytes(n, corrupt_every)
    whole = IncrementalReader("metrics").feed(data)
    assert whole.records == expected

    reader = IncrementalReader("metrics")
    got, bad, offsets = [], [], []
    fed = 0
    for chunk in _chunks(data, cuts):
        res = reader.feed(chunk)
        fed += len(chunk)
        got += res.records
        bad += [c.line_no for c in res.corrupt]
        offsets += res.offsets
        # the offset always stands just past a whole line; the rest of what was fed is held back
        assert reader.offset == 0 or data[reader.offset - 1:reader.offset] == b"\n"
        assert reader.offset + reader.pending_bytes == fed
    assert got == expected
    assert bad == corrupt_lines == [c.line_no for c in whole.corrupt]
    assert reader.corrupt_count == len(corrupt_lines)
    assert reader.offset == len(data) and reader.pending_bytes == 0
    assert reader.line_no == data.count(b"\n")
    assert offsets == whole.offsets


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), corrupt_every=st.sampled_from([0, 5]), split=st.integers(0, 10_000),
       cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_resuming_at_a_stored_offset_gives_the_remaining_records_exactly_once(n, corrupt_every, split, cuts):
    data, expected, corrupt_lines = _file_bytes(n, corrupt_every)
    first = IncrementalReader("metrics")
    seen = []
    for chunk in _chunks(data[: split % (len(data) + 1)], cuts):
        seen += first.feed(chunk).records
    # what a streamer stores: the offset and line number just past the last complete line
    offset, line_no = first.offset, first.line_no
    assert offset == 0 or data[offset - 1:offset] == b"\n"

    resumed = IncrementalReader("metrics", offset=offset, line_no=line_no)
    res = resumed.feed(data[offset:])
    assert seen + res.records == expected
    assert [c.line_no for c in res.corrupt] == [ln for ln in corrupt_lines if ln > line_no]
    assert resumed.offset == len(data)


def test_partial_last_line_is_held_back_until_its_newline_arrives():
    line = encode_record(_metric(3))
    reader = IncrementalReader("metrics")
    res = reader.feed(line[:-10])
    assert res.records == [] and res.corrupt == []
    assert (reader.offset, reader.pending_bytes) == (0, len(line) - 10)
    res = reader.feed(line[-10:-1])
    assert res.records == []
    res = reader.feed(line[-1:] + line[:5])
    assert [r["step"] for r in res.records] == [3]
    assert res.offsets == [len(line)] and reader.offset == len(line) and reader.pending_bytes == 5


def test_read_records_leaves_out_a_partial_last_line_and_tolerates_a_missing_file(tmp_path):
    path = tmp_path / RunPaths.EVENTS
    path.write_bytes(encode_record(event_record("started", 0, t=1.0)) + b'{"t": 2.0, "attem')
    records, corrupt = read_records(path, "events")
    assert [r["event"] for r in records] == ["started"] and corrupt == []
    assert read_records(tmp_path / "missing.jsonl") == ([], [])


def test_corrupt_lines_are_counted_with_line_numbers_and_reading_continues():
    good = [encode_record(_metric(s)) for s in range(3)]
    data = good[0] + b"not json\n" + good[1] + b'{"t": 1, "attempt": 0, "step": "x"}\n' + b"\n" + good[2]
    reader = IncrementalReader("metrics")
    res = reader.feed(data)
    assert [r["step"] for r in res.records] == [0, 1, 2]
    assert [(c.line_no, c.offset) for c in res.corrupt] == [(2, len(good[0])),
                                                             (4, len(good[0]) + 9 + len(good[1]))]
    assert "not JSON" in res.corrupt[0].reason and res.corrupt[0].text == "not json"
    assert "'step' must be an integer" in res.corrupt[1].reason
    assert "missing field 'loss'" in res.corrupt[1].reason
    assert reader.corrupt_count == 2 and reader.line_no == 6


def test_an_overlong_line_is_skipped_once_and_the_next_line_is_read(tmp_path):
    reader = IncrementalReader("metrics")
    reader.MAX_LINE_BYTES = 200
    junk = b"x" * 500 + b"\n"
    good = encode_record(_metric(1))
    corrupt, records = [], []
    for i in range(0, len(junk + good), 60):
        res = reader.feed((junk + good)[i:i + 60])
        corrupt += res.corrupt
        records += res.records
    assert len(corrupt) == 1 and corrupt[0].line_no == 1 and "longer than 200 bytes" in corrupt[0].reason
    assert [r["step"] for r in records] == [1]
    assert reader.line_no == 2 and reader.offset == len(junk + good) and reader.corrupt_count == 1


def test_truncation_is_detected_by_check_size_and_reset_starts_over():
    data = b"".join(encode_record(_metric(s)) for s in range(4))
    reader = IncrementalReader("metrics")
    reader.feed(data)
    assert not reader.check_size(len(data))
    assert not reader.check_size(len(data) + 50)  # grown: fine
    assert reader.check_size(len(data) - 1)
    assert reader.truncated
    reader.reset()
    assert (reader.offset, reader.line_no, reader.truncated) == (0, 0, False)
    assert [r["step"] for r in reader.feed(data[: len(data) // 2 + 1]).records] == [0, 1]


# ---------------------------------------------------------------------------------------------- formats


def test_nan_and_infinity_are_written_as_null_and_read_back_as_none():
    rec = _metric(1, loss=float("nan"), grad_norm=float("inf"), gpu_mem_gb=float("-inf"))
    assert rec["loss"] is None and rec["grad_norm"] is None and rec["gpu_mem_gb"] is None
    raw = {"t": 1.0, "attempt": 0, "step": 2, "epoch": 0.1, "samples": 1, "tokens": 1, "loss": math.nan,
           "lr": 1e-5, "grad_norm": math.inf, "tokens_per_s": 1.0}
    line = encode_record(raw)
    assert b"NaN" not in line and b"Infinity" not in line
    assert json.loads(line)["loss"] is None and json.loads(line)["grad_norm"] is None
    nested = event_record("warning", 0, {"values": [1.0, float("nan")], "x": {"y": float("inf")}}, t=1.0)
    assert json.loads(encode_record(nested))["detail"] == {"values": [1.0, None], "x": {"y": None}}
    assert _eval(pass_at={1: float("nan")})["pass@1"] is None
    # a line from a writer that emitted Python's NaN token is read as null, not as corrupt
    foreign = json.dumps(raw).encode() + b"\n"
    assert b"NaN" in foreign
    res = IncrementalReader("metrics").feed(foreign)
    assert res.corrupt == [] and res.records[0]["loss"] is None and res.records[0]["grad_norm"] is None


def test_builders_produce_valid_records_and_refuse_bad_arguments():
    assert validate_record("metrics", _metric(1, gpu_mem_gb=3.5)) == []
    ev = _eval()
    assert validate_record("evals", ev) == []
    assert (ev["pass@1"], ev["pass@10"]) == (0.4, 0.7)
    assert validate_record("events", event_record("checkpoint_saved", 1, {"step": 20})) == []
    with pytest.raises(ValueError, match="unknown metric fields"):
        _metric(1, gpu_temp=80.0)
    with pytest.raises(ValueError, match="subset"):
        _eval(subset="dirty")
    with pytest.raises(ValueError, match="k=1"):
        _eval(pass_at={10: 0.5})
    with pytest.raises(ValueError, match="unknown event"):
        event_record("exploded", 0)


@pytest.mark.parametrize(
    ("kind", "change", "problem"),
    [
        ("metrics", {"loss": None, "step": None}, "'step' must be an integer"),
        ("metrics", {"step": 1.5}, "'step' must be an integer"),
        ("metrics", {"attempt": True}, "'attempt' must be an integer"),
        ("metrics", {"t": "yesterday"}, "'t' must be a number"),
        ("metrics", {"loss": "low"}, "'loss' must be a number or null"),
        ("metrics", {"gpu_mem_gb": [1]}, "'gpu_mem_gb' must be a number or null"),
        ("metrics", {"lr": False}, "'lr' must be a number or null"),
        ("metrics", {"__delete__": "tokens_per_s"}, "missing field 'tokens_per_s'"),
        ("evals", {"subset": "some"}, "'subset' must be one of"),
        ("evals", {"pass@1": "0.5"}, "'pass@1' must be a number or null"),
        ("evals", {"pass@10": True}, "'pass@10' must be a number or null"),
        ("evals", {"n_tasks": 1.5}, "'n_tasks' must be an integer"),
        ("evals", {"benchmark": 3}, "'benchmark' must be a string"),
        ("evals", {"temperature": None}, "'temperature' must be a number"),
        ("evals", {"__delete__": "pass@1"}, "missing field 'pass@1'"),
        ("events", {"event": "boom"}, "unknown event 'boom'"),
        ("events", {"detail": "text"}, "'detail' must be a JSON object"),
        ("events", {"__delete__": "attempt"}, "missing field 'attempt'"),
    ],
)
def test_validate_record_names_the_bad_field(kind, change, problem):
    rec = {"metrics": _metric(4), "evals": _eval(), "events": event_record("started", 0, t=1.0)}[kind]
    change = dict(change)
    if "__delete__" in change:
        del rec[change.pop("__delete__")]
    rec.update(change)
    problems = validate_record(kind, rec)
    assert any(problem in p for p in problems), problems


def test_validate_record_rejects_non_objects():
    assert validate_record("metrics", [1, 2]) == ["a metrics record must be a JSON object"]


# ---------------------------------------------------------------------------------------------- writing

WRITER_CHILD = textwrap.dedent("""
    import sys
    from core.records import JsonlWriter, event_record
    who, n = sys.argv[2], int(sys.argv[3])
    with JsonlWriter(sys.argv[1]) as w:
        for i in range(n):
            # a large detail makes each line several kB, so interleaved writes would show
            w.write(event_record("warning", 0, {"who": who, "i": i, "pad": who * (2000 + i % 3000)}, t=float(i)))
""")


def test_two_processes_appending_to_one_file_never_interleave_lines(tmp_path):
    path = tmp_path / RunPaths.EVENTS
    n = 1500
    procs = [subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(path), who, str(n)]) for who in "ab"]
    for p in procs:
        assert p.wait(timeout=60) == 0
    records, corrupt = read_records(path, "events")
    assert corrupt == []
    for who in "ab":
        mine = [r["detail"] for r in records if r["detail"]["who"] == who]
        assert [d["i"] for d in mine] == list(range(n))  # each writer's lines whole and in order
        assert all(d["pad"] == who * (2000 + d["i"] % 3000) for d in mine)
    assert path.read_bytes().count(b"\n") == 2 * n


def test_writer_appends_to_an_existing_file_and_creates_its_directory(tmp_path):
    path = tmp_path / "run" / RunPaths.METRICS
    with JsonlWriter(path) as w:
        w.write(_metric(1))
    with JsonlWriter(path, fsync=True) as w:
        w.write(_metric(2))
    assert [r["step"] for r in read_records(path, "metrics")[0]] == [1, 2]


def test_heartbeat_round_trips_and_garbage_reads_as_none(tmp_path):
    hb = RunPaths(tmp_path).heartbeat
    assert read_heartbeat(hb) is None
    touch_heartbeat(hb)
    assert abs(read_heartbeat(hb) - time.time()) < 5
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat"]  # no temp file left behind
    hb.write_text("")
    assert read_heartbeat(hb) is None
    hb.write_text("nan\n")
    assert read_heartbeat(hb) is None
    hb.write_text("soon\n")
    assert read_heartbeat(hb) is None


def test_only_checkpoints_with_their_completion_marker_count(tmp_path):
    paths = RunPaths(tmp_path)
    for step, complete in ((20, True), (40, False), (100, True)):
        d = paths.checkpoint(step)
        d.mkdir(parents=True)
        if complete:
            (d / RunPaths.COMPLETE_MARKER).touch()
    (paths.checkpoints / "checkpoint-x").mkdir()
    assert paths.complete_checkpoints() == [(20, paths.checkpoint(20)), (100, paths.checkpoint(100))]
    assert paths / RunPaths.METRICS == Path(tmp_path) / "metrics.jsonl" == paths.metrics
