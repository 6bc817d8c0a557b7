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
