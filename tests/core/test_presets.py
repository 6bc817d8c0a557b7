"""Presets: every shipped YAML validates and carries the published shapes and recipe."""

from __future__ import annotations

import pytest

from core.config import RunConfig, load_yaml_text
from core.presets import PresetError, load_preset, preset_names, preset_path, preset_summary

EXPECTED = {f"codellama-{s}-{k}" for s in ("7b", "13b", "34b") for k in ("base", "python", "instruct")} | {
    "phind-codellama-34b-v1",
    "tiny-demo",
}


def test_all_expected_presets_are_shipped() -> None:
    assert set(preset_names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_loads_validates_and_round_trips(name: str) -> None:
    cfg = load_preset(name)
    assert cfg.preset == name
    assert load_yaml_text(cfg.to_yaml(), name) == cfg
    assert preset_summary(name) and "\n" not in preset_summary(name)


@pytest.mark.parametrize(
    ("size", "params_b", "vocab"),
    [("7b", 6.74, {"base": 32016, "instruct": 32016, "python": 32000}),
     ("13b", 13.0, {"base": 32016, "instruct": 32016, "python": 32000}),
     ("34b", 33.74, {"base": 32000, "instruct": 32000, "python": 32000})],
)
def test_codellama_presets_use_real_hf_ids_and_published_shapes(size: str, params_b: float, vocab: dict) -> None:
    suffix = {"base": "hf", "python": "Python-hf", "instruct": "Instruct-hf"}
    for kind in ("base", "python", "instruct"):
        cfg = load_preset(f"codellama-{size}-{kind}")
        assert cfg.model.name_or_path == f"codellama/CodeLlama-{size}-{suffix[kind]}"
        assert cfg.model.kind == kind
        assert cfg.model.architecture.vocab_size == vocab[kind]
        # Published sizes: 6.74B, 13.0B (13.02), 33.7B parameters.
        assert cfg.model.architecture.parameter_count() / 1e9 == pytest.approx(params_b, rel=0.01)
        assert cfg.deepspeed.zero_stage == 3
    assert load_preset(f"codellama-{size}-instruct").data.prompt_template == "codellama-instruct"


def test_phind_preset_is_the_published_recipe() -> None:
    cfg = load_preset("phind-codellama-34b-v1")
    assert cfg.model.name_or_path == "codellama/CodeLlama-34b-hf" and cfg.model.init == "pretrained"
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.gather_16bit_weights_on_model_save
    assert cfg.deepspeed.offload_optimizer == "none" and cfg.deepspeed.offload_param == "none"
    assert cfg.attention.implementation == "flash_attention_2"
    assert cfg.training.max_seq_length == 4096 and cfg.training.epochs == 2
    assert (cfg.cluster.nodes, cfg.cluster.gpus_per_node, cfg.cluster.gpu_type) == (4, 8, "A100-80GB")
    assert cfg.data.prompt_template == "phind" and cfg.data.num_samples == 80_000


def test_tiny_demo_runs_on_cpu_without_downloads() -> None:
    cfg = load_preset("tiny-demo")
    assert cfg.model.init == "random" and cfg.model.tokenizer == "train:bpe"
    assert cfg.data.demo is not None and not cfg.data.train_files
    assert cfg.cluster.gpu_type == "cpu" and cfg.world_size == 2
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.torch_adam
    assert cfg.attention.fallback == "sdpa"
    # checkpoints (and so pass@1 points) mid-run and at the end
    assert cfg.training.save_steps < cfg.training.max_steps and cfg.training.max_steps % cfg.training.save_steps == 0
    assert cfg.model.architecture.parameter_count() < 1_000_000


def test_unknown_preset_names_the_available_ones() -> None:
    with pytest.raises(PresetError, match="tiny-demo"):
        preset_path("gpt-5")


def test_preset_yaml_has_no_field_left_to_defaults_that_matters() -> None:
    # The shipped file states the recipe explicitly: re-dumping changes nothing but key order/comments.
    import yaml

    for name in EXPECTED:
        raw = yaml.safe_load(preset_path(name).read_text())
        assert RunConfig.model_validate(raw) == load_preset(name)
        for section in ("training", "deepspeed", "cluster"):
            assert section in raw, f"{name} leaves {section} to defaults"
