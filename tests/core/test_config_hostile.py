"""Hostile and broken YAML given to the config loader: every case ends in a ConfigError with a line, fast.

A config is parsed by the YAML library and then validated; what the parser accepts but builds into something
huge (aliases), deep (nesting) or unbounded (integers of thousands of digits) must be refused before it is
built, in time linear in the text.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import MAX_CONFIG_BYTES, ConfigError, load_config, load_yaml_text
from core.presets import preset_path


def laughs(levels: int, width: int = 9) -> str:
    """The classic alias bomb: each level lists the previous one `width` times (width**levels strings)."""
    lines = [f'a0: &a0 [{", ".join(["lol"] * width)}]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def refused_within(text: str, seconds: float = 1.0) -> ConfigError:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "hostile.yaml")
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    return info.value


@pytest.mark.parametrize("levels", [5, 9, 30])
def test_billion_laughs_is_refused_within_a_second_with_a_message(levels):
    text = laughs(levels)
    assert len(text) < 70 * (levels + 1)  # a few hundred bytes naming 9**levels strings
    err = refused_within(text)
    assert "aliases" in str(err) and "expand" in str(err)
    assert err.problems[0].line == 1


def test_a_duplicate_key_inside_an_aliased_mapping_is_reported_once_without_expanding_the_aliases():
    text = "base: &b {x: 1, x: 2}\n" + "".join(f"u{i}: &u{i} [*{'b' if i == 0 else f'u{i - 1}'}, "
                                                  f"*{'b' if i == 0 else f'u{i - 1}'}]\n" for i in range(40))
    err = refused_within(text)
    assert [p.path for p in err.problems] == ["base.x"]
    assert err.problems[0].line == 1 and "duplicate key" in err.problems[0].message


def test_an_alias_that_stays_small_is_still_a_valid_config():
    text = (preset_path("tiny-demo").read_text().replace("\nname: Tiny demo (CPU)\n", "\nname: &n Tiny demo (CPU)\n")
            .replace("\npreset: tiny-demo\n", "\npreset: *n\n"))
    assert load_yaml_text(text).preset == "Tiny demo (CPU)"


@pytest.mark.parametrize("digits", [20, 4301, 100_000])
def test_integers_beyond_64_bits_are_refused_with_their_field_and_line(digits):
    text = f"name: x\nmodel:\n  name_or_path: m\ntraining:\n  max_steps: {'9' * digits}\n"
    err = refused_within(text)
    (problem,) = err.problems
    assert problem.path == "training.max_steps" and problem.line == 5
    assert f"({digits} digits)" in problem.message and "64-bit" in problem.message
    assert len(problem.message) < 200  # the number is abbreviated, not echoed


@pytest.mark.parametrize("text", [
    "name: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "name: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n",
    "".join(" " * i + f"k{i}:\n" for i in range(1000)) + " " * 1000 + "v\n",
    "x:\n" + "".join(" " * i + "- \n" for i in range(1, 1000)),
], ids=["flow-sequences", "flow-mappings", "block-mappings", "block-sequences"])
def test_100k_deep_nesting_is_refused_not_a_recursion_error(text):
    err = refused_within(text)
    assert err.problems[0].line is not None
    assert "nest" in str(err) or "not valid YAML" in str(err)


def test_an_oversized_config_file_is_refused_before_it_is_read(tmp_path: Path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:  # a valid YAML mapping, just far too big for a run config
        f.write("description: |\n")
        line = "  " + "x" * 98 + "\n"
        f.write(line * (MAX_CONFIG_BYTES // len(line) + 10))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(info.value) and "at most" in str(info.value) and "bytes" in str(info.value)


def test_a_directory_or_an_unreadable_path_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_constructor_error_inside_valid_yaml_syntax_is_a_config_error():
    for text in ("name: 2001-13-45\n", "name: !!binary '%%%'\n", "name: !!python/object:os.system {}\n"):
        refused_within(text)


@pytest.mark.parametrize("typo, suggestion", [
    ("trainig", "training"), ("training.learnig_rate", "learning_rate"),
    ("deepspeed.zero_stag", "zero_stage"), ("evaluation.benchmarks.0.nme", "name"),
])
def test_a_misspelled_field_gets_a_did_you_mean_suggestion(typo, suggestion):
    text = preset_path("tiny-demo").read_text()
    *parents, last = typo.split(".")
    if not parents:
        text += f"{last}: 1\n"
    elif parents == ["evaluation", "benchmarks", "0"]:
        text = text.replace("  - name: humaneval\n", f"  - name: humaneval\n    {last}: x\n", 1)
    else:
        text = text.replace(f"\n{parents[0]}:\n", f"\n{parents[0]}:\n  {last}: 1\n", 1)
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "t.yaml")
    messages = {p.path: p.message for p in info.value.problems if p.kind == "unknown_field"}
    assert f"did you mean {suggestion!r}?" in messages[typo], info.value


def test_a_field_far_from_any_schema_field_gets_no_suggestion():
    with pytest.raises(ConfigError) as info:
        load_yaml_text(preset_path("tiny-demo").read_text() + "zzzqqq: 1\n")
    (problem,) = [p for p in info.value.problems if p.path == "zzzqqq"]
    assert "did you mean" not in problem.message and "check the spelling" in problem.message


# --------------------------------------------------------------------------------- property: any YAML tree

_scalars = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.integers(min_value=5, max_value=6000).map(lambda n: "9" * n),  # huge integers, as YAML text
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["null", "true", "~", "''", "humaneval", "2001-13-45", "0x1F", "1_000", ".nan", "-.inf"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12).map(repr),
)
_keys = st.sampled_from(["name", "model", "training", "data", "evaluation", "name_or_path", "max_steps",
                         "benchmarks", "trainig", "x", "<<", "cluster", "nodes"])


def _tree(depth: int) -> st.SearchStrategy[str]:
    """Flow-style YAML text for a random tree of mappings, sequences and scalars."""
    if depth == 0:
        return _scalars.map(str)
    child = _tree(depth - 1)
    return st.one_of(
        _scalars.map(str),
        st.lists(child, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(_keys, child), max_size=4).map(
            lambda kvs: "{" + ", ".join(f"{k}: {v}" for k, v in kvs) + "}"),
    )


@st.composite
def hostile_documents(draw) -> str:
    """A top-level mapping whose values are random trees, anchored and re-used through aliases at random,
    with an optional alias bomb and an optional very deep nest."""
    lines: list[str] = []
    anchors: list[str] = []
    for i in range(draw(st.integers(1, 6))):
        key = draw(_keys) if i else "name"
        if anchors and draw(st.booleans()):
            refs = draw(st.lists(st.sampled_from(anchors), min_size=1, max_size=9))
            value = "[" + ", ".join(f"*{a}" for a in refs) + "]"
        else:
            value = draw(_tree(3))
        if draw(st.booleans()):
            anchors.append(f"n{i}")
            value = f"&n{i} {value}"
        lines.append(f"{key}{i if draw(st.booleans()) else ''}: {value}")
    if draw(st.booleans()):
        lines.append(laughs(draw(st.integers(1, 12)), draw(st.integers(2, 12))).replace("a", "b").rstrip("\n"))
    if draw(st.booleans()):
        depth = draw(st.sampled_from([50, 101, 1000, 100_000]))
        lines.append("deep: " + "[" * depth + "]" * depth)
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_documents())
def test_any_yaml_tree_gives_a_config_or_a_config_error_within_a_second(text):
    start = time.perf_counter()
    try:
        load_yaml_text(text, "random.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        assert len(str(exc)) < 20_000  # bounded: no echo of an expanded tree
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


@pytest.mark.parametrize("name, shown", [
    ("clear\x1b[2J", "U+001B"), ("two\nlines", "U+000A"), ("tab\there", "U+0009"), ("bidi\u202eevil", "U+202E"),
    ("nul\x00", "U+0000"),
])
def test_a_run_name_with_control_characters_is_refused_saying_which(name, shown):
    from core.config import validate_data
    from core.presets import load_preset

    data = load_preset("tiny-demo").model_dump(mode="json")
    data["name"] = name
    _, problems = validate_data(data)
    (problem,) = [p for p in problems if p.path == "name"]
    assert "control or invisible format characters" in problem.message and f"({shown})" in problem.message


def test_a_file_of_half_a_million_values_is_refused_before_they_are_built():
    err = refused_within("name: x\nlist: [" + ",".join(["1"] * 500_000) + "]\n")
    (problem,) = err.problems
    assert "more than 10,000 values" in problem.message and problem.line == 2
