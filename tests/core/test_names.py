"""Display names: unique among the runs shown, printable, and the checks on names and tags typed by users."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.names import clean_name, clean_tag, display_name, display_names, printable, run_suffix


@dataclass
class R:
    run_id: str
    name: str


def test_colliding_names_get_the_run_ids_short_suffix_and_unique_ones_stay_bare():
    runs = [R("20260101-100000-1a2b3c", "Tiny demo (CPU)"), R("20260101-110000-4d5e6f", "Tiny demo (CPU)"),
            R("20260101-120000-777777", "phind 34b"), R("20260101-130000-888888", "tiny  demo (cpu) ")]
    names = display_names(runs)
    assert names == {
        "20260101-100000-1a2b3c": "Tiny demo (CPU) · 1a2b3c",
        "20260101-110000-4d5e6f": "Tiny demo (CPU) · 4d5e6f",
        "20260101-120000-777777": "phind 34b",
        "20260101-130000-888888": "tiny  demo (cpu) · 888888",  # same to a reader: told apart too
    }
    assert len(set(names.values())) == len(runs)
    assert display_name(runs[2], runs) == "phind 34b"
    assert run_suffix("20260101-100000-1a2b3c") == "1a2b3c"


def test_equal_suffixes_fall_back_to_the_whole_id_and_empty_names_to_the_id():
    runs = [R("a-1-abc", "x"), R("b-2-abc", "x"), R("c-3-def", "")]
    assert display_names(runs) == {"a-1-abc": "x · a-1-abc", "b-2-abc": "x · b-2-abc", "c-3-def": "c-3-def"}


def test_control_characters_are_escaped_so_a_name_prints_on_one_line_as_itself():
    assert printable("run\n1\t\x1b[31mred\u202egnp.exe") == "run\\n1\\t\\x1b[31mred\\u202egnp.exe"
    assert printable("naïve 模型 👩‍💻") == "naïve 模型 👩‍💻"
    assert display_names([R("r-1-aaa", "evil\x1b]0;title\x07")])["r-1-aaa"] == "evil\\x1b]0;title\\x07"


def test_typed_names_and_tags_are_checked():
    assert clean_name("  my run  ") == "my run"
    for bad, why in (("", "empty"), ("a\nb", "U\\+000A"), ("x\u202e", "U\\+202E"), ("x" * 201, "at most 200")):
        with pytest.raises(ValueError, match=why):
            clean_name(bad)
    assert clean_tag(" lr-sweep ") == "lr-sweep"
    for bad in ("", "two words", "a,b", "bell\x07"):
        with pytest.raises(ValueError):
            clean_tag(bad)
