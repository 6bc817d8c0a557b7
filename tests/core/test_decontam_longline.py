"""Very long training lines are streamed from the file (core/decontam/longline.py) and matched a window at a
time (matcher.scan_long): the report is exactly the one the whole line gives, and memory does not grow with
the line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core.decontam.longline as longline
import core.decontam.matcher as matcher
import core.decontam.reader as reader
from core.decontam import DecontamError, scan
from core.decontam.longline import LongText, _safe_cut

QUESTIONS = [
    "def add(a, b):\n    \"\"\"Return the sum of a and b, both integers.\"\"\"\n",
    "Write a function to find the longest common prefix among a list of café names, ünïcode included.",
    "Check whether a string is a palindrome 😀 ignoring case and every non-alphanumeric character in it.",
    "short q",
]


def _evals(tmp_path: Path) -> str:
    path = tmp_path / "evals.jsonl"
    path.write_text("".join(json.dumps({"task_id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    return f"custom={path}"


def _small_thresholds(monkeypatch) -> None:
    """The long path for lines of a few hundred bytes, in pieces of a few bytes: every boundary case occurs."""
    monkeypatch.setattr(longline, "LONG_LINE_BYTES", 64)
    monkeypatch.setattr(longline, "LONG_STRING_BYTES", 40)
    monkeypatch.setattr(longline, "PIECE_BYTES", 7)
    monkeypatch.setattr(longline, "READ_BYTES", 16)
    monkeypatch.setattr(reader, "READ_BYTES", 32)
    monkeypatch.setattr(matcher, "LONG_WINDOW_CHARS", 150)


def _comparable(report: dict) -> list:
    return [(i["task_id"], i["n_matching_rows"], [(m["train_index"], m["field"], m["eval_span"], m["train_span"],
                                                   m["text"], m["window"]) for m in i["matches"]],
             [(w["eval_span"], w["n_rows"]) for w in i["windows"]], i["matched_spans"]) for i in report["items"]]


_pieces = st.one_of(
    st.sampled_from(QUESTIONS),
    st.sampled_from(QUESTIONS).map(lambda q: re.sub(r"\s+", lambda m: "  \t" if len(m.group()) % 2 else "\n", q)),
    st.text(alphabet="ab \n\t\"\\/é中😀\u2028x1_", max_size=30),
    st.sampled_from(["\\", "\"", "\\\\\\", "\U0001F600", "\ud800", "é" * 5, " " * 40]),
)


@st.composite
def rows(draw) -> list[dict]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        text = "".join(draw(st.lists(_pieces, min_size=0, max_size=25)))
        row = {"id": f"r{i}", "text": text}
        if draw(st.booleans()):
            row["messages"] = [{"role": "user", "content": "".join(draw(st.lists(_pieces, max_size=6)))}]
        if draw(st.booleans()):
            row["n"] = draw(st.integers(-5, 10**12))
        out.append(row)
    return out


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=rows(), mode=st.sampled_from(["sampled", "exhaustive", "ngram13"]),
       ensure_ascii=st.booleans())
def test_a_long_line_streamed_gives_the_report_of_the_line_read_whole(tmp_path, monkeypatch, rows, mode,
                                                                        ensure_ascii):
    path = tmp_path / "t.jsonl"
    lines = "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows)
    if re.search("[\ud800-\udfff]", lines):  # a lone surrogate is valid JSON only as an escape
        lines = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(lines, encoding="utf-8")
    evals = _evals(tmp_path)
    whole, flagged_whole = scan([str(path)], [evals], mode=mode, window=12, allow_no_text=True)
    with monkeypatch.context() as m:
        _small_thresholds(m)
        streamed, flagged_streamed = scan([str(path)], [evals], mode=mode, window=12, allow_no_text=True)
    assert _comparable(streamed) == _comparable(whole)
    assert flagged_streamed == flagged_whole
    assert streamed["train"] == whole["train"]


def test_long_text_pieces_decode_escapes_split_anywhere(tmp_path):
    text = 'a\\"b\\\\c\n\t\u2603\U0001F600 é' * 50 + "\\"
    for ensure_ascii in (True, False):
        raw = json.dumps(text, ensure_ascii=ensure_ascii).encode()
        path = tmp_path / "s.bin"
        path.write_bytes(b"xx" + raw + b"yy")
        long_text = LongText(str(path), 3, 2 + len(raw) - 1)
        for block in (1, 2, 3, 5, 6, 7, 13, 1 << 20):
            assert "".join(long_text.pieces(block)) == text, (ensure_ascii, block)


@pytest.mark.parametrize("text, cut", [
    ("abc", 3), ("ab\\", 2), ("ab\\\\", 4), ("ab\\n", 4), ("a\\u00e", 1), ("a\\u00e9", 7),
    ("a\\ud83d", 1), ("a\\ud83d\\ude00", 13), ("a\\\\ud83d", 8),
])
def test_safe_cut_never_splits_an_escape_or_a_surrogate_pair(text, cut):
    assert _safe_cut(text) == cut


def test_a_malformed_long_line_is_named_by_line(tmp_path, monkeypatch):
    _small_thresholds(monkeypatch)
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "' + "x" * 200 + '", "n": 12abc}\n')
    with pytest.raises(DecontamError, match=r"t\.jsonl:2: malformed JSON line \(bad value"):
        scan([str(path)], ["humaneval"])
    path.write_text('{"text": "ok"}\n{"text": "' + "x" * 200 + '"\n')
    with pytest.raises(DecontamError, match=r"t\.jsonl:2: malformed JSON line"):
        scan([str(path)], ["humaneval"])
    path.write_text('{"text": "' + "x" * 200 + '\n{"text": "ok"}\n')  # a string left open: not read on
    with pytest.raises(DecontamError, match=r"t\.jsonl:1: malformed JSON line \(a string that is not closed"):
        scan([str(path)], ["humaneval"])
    path.write_text('{"a": ' + "[" * 300 + "]" * 300 + ', "text": "' + "x" * 200 + '"}\n')
    with pytest.raises(DecontamError, match=r"t\.jsonl:1: malformed JSON line \(nested more than"):
        scan([str(path)], ["humaneval"])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_memory_does_not_grow_with_the_length_of_one_line_in_any_mode(tmp_path):
    """Peak RSS checking one 24 MB line stays within a few MB of checking one 10 MB line, in every mode; the
    whole line held (as bytes, then as str, then character maps) took ~27x its size."""
    from core.evalsets import load_humaneval

    prompt = load_humaneval().tasks[3].prompt
    body = Path(json.__file__).read_text() * 3
    paths = {}
    for mb in (10, 24):
        parts, size = [], 0
        while size < mb << 20:
            parts.append(body)
            size += len(body)
        parts.insert(len(parts) // 2, prompt)
        paths[mb] = tmp_path / f"line-{mb}.jsonl"
        paths[mb].write_text(json.dumps({"id": "long", "text": "".join(parts)}) + "\n")
    code = """
import json, re, sys
import core.decontam.reader as reader
from core.decontam import run_check
reader.UNIT_BYTES = 4 << 20  # units cut inside the line: finding where a unit ends must not read the line whole
rep = run_check([sys.argv[1]], ["humaneval"], mode=sys.argv[2])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps([hwm, [i["task_id"] for i in rep["items"] if i["contaminated"]]]))
"""
    for mode in ("sampled", "exhaustive", "ngram13"):
        peaks = {}
        for mb, path in paths.items():
            out = subprocess.run([sys.executable, "-c", code, str(path), mode], check=True, capture_output=True,
                                 text=True).stdout
            peaks[mb], found = json.loads(out)
            assert found == ["HumanEval/3"], (mode, found)
        growth_mb = (peaks[24] - peaks[10]) / 1024
        print(f"{mode}: peak RSS {peaks[10] / 1024:.0f} MB (10 MB line), {peaks[24] / 1024:.0f} MB (24 MB line)")
        assert growth_mb < 8, f"{mode}: peak RSS grew by {growth_mb:.1f} MB from a 10 MB to a 24 MB line"
