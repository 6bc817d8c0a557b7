"""The run-config schema: every rule fires with its fields named, errors carry YAML lines, round trips."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from core.config import (
    RULES,
    ConfigError,
    RunConfig,
    field_help,
    load_config,
    load_yaml_text,
    resolved_dict,
    save_config,
    validate_data,
)
from core.presets import load_preset


def base() -> dict[str, Any]:
    return load_preset("codellama-7b-base").model_dump(mode="json")


def with_(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Set dotted paths, e.g. with_(d, **{"training.max_steps": 5})."""
    data = copy.deepcopy(data)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return data


# (rule, changes that break only that rule, fields its message must name)
BROKEN: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("check_batch_split", {"training.global_batch_size": 30}, ("training.global_batch_size", "training.micro_batch_size")),
    ("check_batch_given_once", {"training.gradient_accumulation_steps": 2, "training.global_batch_size": 32},
     ("training.gradient_accumulation_steps", "training.global_batch_size")),
    ("check_one_data_source", {"data.train_files": ["a.jsonl"], "data.dataset_dir": "/d"}, ("data.train_files", "data.dataset_dir")),
    ("check_random_init_has_architecture", {"model.init": "random", "model.architecture": None}, ("model.init", "model.architecture")),
    ("check_trained_tokenizer_only_for_random", {"model.tokenizer": "train:bpe"}, ("model.tokenizer", "model.init")),
    ("check_heads_divide", {"model.architecture.num_attention_heads": 30}, ("model.architecture.hidden_size", "num_attention_heads")),
    ("check_seq_fits_positions", {"training.max_seq_length": 32768}, ("training.max_seq_length", "model.architecture.max_position_embeddings")),
    ("check_param_offload_needs_zero3", {"deepspeed.zero_stage": 2, "deepspeed.offload_param": "cpu"}, ("deepspeed.offload_param", "deepspeed.zero_stage")),
    ("check_nvme_path", {"deepspeed.offload_optimizer": "nvme"}, ("deepspeed.offload_optimizer", "deepspeed.nvme_path")),
    ("check_optimizer_offload_needs_zero", {"deepspeed.zero_stage": 0, "deepspeed.offload_optimizer": "cpu"}, ("deepspeed.offload_optimizer", "deepspeed.zero_stage")),
    ("check_greedy_single_sample", {"evaluation.n_samples": 10}, ("evaluation.decoding", "evaluation.n_samples")),
    ("check_sampling_temperature", {"evaluation.decoding": "sampled", "evaluation.temperature": 0.0}, ("evaluation.decoding", "evaluation.temperature")),
    ("check_benchmark_paths", {"evaluation.benchmarks": [{"name": "mbpp"}]}, ("evaluation.benchmarks", "mbpp")),
    ("check_save_within_run", {"training.max_steps": 50}, ("training.save_steps", "training.max_steps")),
    # 7B on one A100-80GB: weights 13.5 GB + a KV cache for 512 x (460 + 512) tokens (261 GB) cannot fit one GPU.
    ("check_evaluation_fits", {"evaluation.gpus": 1, "evaluation.batch_size": 512},
     ("evaluation.gpus", "evaluation.batch_size", "GB")),
]


def test_every_rule_has_a_broken_config_below() -> None:
    assert {r.name for r in RULES} == {name for name, _, _ in BROKEN}


@pytest.mark.parametrize(("rule_name", "changes", "fields"), BROKEN, ids=[b[0] for b in BROKEN])
def test_rule_fires_alone_and_names_its_fields(rule_name: str, changes: dict, fields: tuple[str, ...]) -> None:
    config, problems = validate_data(with_(base(), **changes))
    assert config is None
    assert [p.kind for p in problems] == ["rule"], problems
    (problem,) = problems
    assert problem.message.endswith(f"[{rule_name}]")
    for f in fields:
        assert f in problem.message, f"{f!r} not named in: {problem.message}"
    rule = next(r for r in RULES if r.name == rule_name)
    assert problem.path == rule.fields[0]
    # The same rule guards a RunConfig built directly (a RunConfig object is always valid).
    with pytest.raises(ValueError, match=rule_name):
        RunConfig.model_validate(with_(base(), **changes))


def test_benchmark_listed_twice_is_refused() -> None:
    _, problems = validate_data(with_(base(), **{"evaluation.benchmarks": [{"name": "humaneval"}, {"name": "humaneval"}]}))
    assert [p.message for p in problems] == ["evaluation.benchmarks lists a benchmark twice [check_benchmark_paths]"]


BAD_YAML = """\
name: broken
model:
  name_or_path: codellama/CodeLlama-7b-hf
training:
  epochs: two
  micro_batch_size: 3
  global_batch_size: 100
  colour: blue
cluster:
  nodes: 1
  gpus_per_node: 8
"""


def test_wrong_type_unknown_field_and_batch_split_all_reported_with_lines() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_text(BAD_YAML, "run.yaml")
    got = {(p.path, p.kind, p.line, p.column) for p in info.value.problems}
    assert got == {
        ("training.epochs", "type", 5, 3),
        ("training.global_batch_size", "rule", 7, 3),
        ("training.colour", "unknown_field", 8, 3),
    }
    text = str(info.value)
    assert "run.yaml:5:3: training.epochs:" in text
    assert "run.yaml:7:3: training.global_batch_size: training.global_batch_size (100) is not divisible" in text
    assert "run.yaml:8:3: training.colour: unknown field" in text


def test_rule_touching_a_field_in_error_is_not_reported_twice() -> None:
    text = BAD_YAML.replace("micro_batch_size: 3", "micro_batch_size: three")
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "run.yaml")
    paths = [p.path for p in info.value.problems]
    assert "training.micro_batch_size" in paths
    assert not [p for p in info.value.problems if p.kind == "rule"]


def test_nested_and_list_errors_point_at_their_lines() -> None:
    text = """\
name: nested
model:
  name_or_path: m
  architecture:
    hidden_size: 4096
    intermediate_size: 11008
    num_hidden_layers: -1
    num_attention_heads: 32
    num_key_value_heads: 32
    vocab_size: 32000
evaluation:
  benchmarks:
  - name: humaneval
  - name: mbppp
"""
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "n.yaml")
    got = {(p.path, p.line) for p in info.value.problems}
    assert ("model.architecture.num_hidden_layers", 7) in got
    assert ("evaluation.benchmarks.1.name", 14) in got


def test_missing_required_field_points_at_its_section() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_text("name: x\ntraining:\n  epochs: 1\nmodel:\n  kind: base\n", "m.yaml")
    (p,) = info.value.problems
    assert (p.path, p.kind, p.line) == ("model.name_or_path", "missing", 4)


def test_unknown_top_level_field_is_reported_with_its_line() -> None:
    text = "name: x\nmodel:\n  name_or_path: m\nlearning_rate: 0.1\n"
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "t.yaml")
    (p,) = info.value.problems
    assert (p.path, p.kind, p.line, p.column) == ("learning_rate", "unknown_field", 4, 1)


def test_missing_model_and_name_are_both_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_text("description: nothing else\n", "e.yaml")
    assert {p.path for p in info.value.problems} == {"model", "name"}


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_yaml_text(text, "empty.yaml")


def test_invalid_yaml_syntax_gives_the_line() -> None:
    text = "name: x\nmodel:\n  name_or_path: m\ntraining: [1, 2\n  epochs: 3\n"
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "s.yaml")
    (p,) = info.value.problems
    assert p.kind == "syntax" and p.line == 5
    assert "not valid YAML" in p.message


def test_a_list_instead_of_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml_text("- a\n- b\n", "l.yaml")
    with pytest.raises(ConfigError) as info:
        load_yaml_text("name: x\nmodel:\n  name_or_path: m\ntraining: [1]\n", "l.yaml")
    assert [(p.path, p.line) for p in info.value.problems] == [("training", 4)]


def test_duplicate_key_is_an_error_not_a_silent_override() -> None:
    text = "name: x\nmodel:\n  name_or_path: m\ntraining:\n  epochs: 1\n  epochs: 3\n"
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "d.yaml")
    (p,) = info.value.problems
    assert (p.path, p.line) == ("training.epochs", 6)
    assert "duplicate key" in p.message


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_config(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("preset", ["phind-codellama-34b-v1", "tiny-demo", "codellama-13b-instruct"])
def test_config_yaml_round_trip_is_lossless(preset: str, tmp_path: Path) -> None:
    cfg = load_preset(preset)
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    changed = RunConfig.model_validate(with_(cfg.model_dump(mode="json"), **{"name": "it's \"ü\" #1: x", "training.seed": 7}))
    save_config(changed, path)
    again = load_config(path)
    assert again == changed and again.name == "it's \"ü\" #1: x"
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]  # no temp file left behind


def test_resolved_dict_carries_derived_values() -> None:
    cfg = load_preset("phind-codellama-34b-v1")
    d = resolved_dict(cfg)
    assert d["derived"] == {
        "world_size": 32,
        "gradient_accumulation_steps": 4,  # 128 / (1 x 32)
        "global_batch_size": 128,
        "parameter_count": cfg.model.architecture.parameter_count(),
    }
    assert d["training"]["global_batch_size"] == 128 and d["training"]["gradient_accumulation_steps"] is None
    tiny = resolved_dict(load_preset("tiny-demo"))["derived"]
    assert (tiny["world_size"], tiny["gradient_accumulation_steps"], tiny["global_batch_size"]) == (2, 1, 8)


def test_accumulation_given_directly_and_default() -> None:
    cfg = RunConfig.model_validate(with_(base(), **{"training.global_batch_size": None, "training.gradient_accumulation_steps": 3}))
    assert (cfg.gradient_accumulation, cfg.global_batch) == (3, 24)
    cfg = RunConfig.model_validate(with_(base(), **{"training.global_batch_size": None}))
    assert (cfg.gradient_accumulation, cfg.global_batch) == (1, 8)


def test_field_help_returns_descriptions_of_nested_fields() -> None:
    assert "ZeRO stage" in field_help("deepspeed.zero_stage")
    assert "residual stream" in field_help("model.architecture.hidden_size")
    assert "Sequences per optimizer step" in field_help("training.global_batch_size")
