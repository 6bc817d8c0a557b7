"""Config diff: dotted paths, missing paths, differences only."""

from core.configdiff import MISSING, diff, flatten, format_value


def test_flatten_walks_nested_mappings_and_keeps_lists_as_leaves():
    cfg = {"model": {"name": "m", "rope": {"theta": 1e6}}, "cluster": {"hosts": ["a", "b"]}, "empty": {}}
    assert flatten(cfg) == {"model.name": "m", "model.rope.theta": 1e6, "cluster.hosts": ["a", "b"], "empty": {}}


def test_differences_only_lists_exactly_the_differing_paths():
    a = {"training": {"lr": 2e-5, "epochs": 3, "seed": 1}, "model": {"name": "x"}}
    b = {"training": {"lr": 1e-5, "epochs": 3, "seed": 1}, "model": {"name": "x"}, "extra": {"flag": True}}
    rows = diff([a, b], differences_only=True)
    assert [r.path for r in rows] == ["extra.flag", "training.lr"]
    assert rows[0].values == (MISSING, True)
    assert rows[1].values == (2e-5, 1e-5)
    every = diff([a, b])
    assert [r.path for r in every] == ["extra.flag", "model.name", "training.epochs", "training.lr", "training.seed"]
    assert [r.differs for r in every] == [True, False, False, True, False]


def test_three_configs_differ_when_any_one_disagrees_and_equal_values_of_other_types_do_not():
    rows = diff([{"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2]}], differences_only=True)
    assert [(r.path, r.values) for r in rows] == [("a", (1, 1, 2))]
    assert diff([{"x": True}, {"x": 1}], differences_only=True)[0].values == (True, 1)  # JSON true != 1


def test_format_value_renders_missing_as_empty_and_lists_as_json():
    assert format_value(MISSING) == ""
    assert format_value(None) == "null"
    assert format_value(False) == "false"
    assert format_value(["a", "b"]) == '["a", "b"]'
    assert format_value(0.5) == "0.5"


def test_differing_paths_are_the_run_table_columns_without_names_and_with_unique_short_labels():
    from core.configdiff import MISSING, differing_paths, short_labels, sort_key

    a = {"name": "a", "training": {"lr": 1e-4, "epochs": 2}, "model": {"name": "x"}, "data": {"seed": 1}}
    b = {"name": "b", "training": {"lr": 3e-4, "epochs": 2}, "model": {"name": "y"}, "data": {"seed": 1, "pack": True}}
    paths = differing_paths([a, b, {}])
    assert paths == ["data.pack", "model.name", "training.lr"]  # top-level name left out; empty config ignored
    assert differing_paths([a]) == [] and differing_paths([a, b], limit=1) == ["data.pack"]
    assert short_labels(["training.lr", "eval.lr", "model.name"]) == {
        "training.lr": "training.lr", "eval.lr": "eval.lr", "model.name": "name"}
    values = [3e-4, "abc", MISSING, 1e-4, True, None, 2]
    assert sorted(values, key=sort_key) == [1e-4, 3e-4, 2, True, "abc", MISSING, None]
