"""The tiny preset's model and tokenizer: reproducible from the seed, and prompts end on a token boundary."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from core.presets import load_preset
from remote.job import demo_data, tiny_model
from remote.job.train import load_model, to_prompt_completion


@pytest.fixture(scope="module")
def demo_rows() -> list[dict[str, str]]:
    cfg = load_preset("tiny-demo")
    rows = datasets.Dataset.from_list(demo_data.generate(64, 3, 0))
    return list(to_prompt_completion(rows, cfg.data, None))


@pytest.fixture(scope="module")
def tokenizer(demo_rows, tmp_path_factory):
    texts = [r["prompt"] + r["completion"] for r in demo_rows]
    return tiny_model.train_bpe_tokenizer(texts, 1024, tmp_path_factory.mktemp("tok") / "tokenizer")


def test_every_prompt_tokenizes_as_a_prefix_of_prompt_plus_answer(demo_rows, tokenizer) -> None:
    """Loss masking and inference both rely on it: the model must train on the context it is later given.
    Byte-level BPE alone merges the prompt's final newline with the answer's indentation (3 of these 64)."""
    answers_opening_with_space = [r for r in demo_rows if r["completion"][:1].isspace()]
    assert answers_opening_with_space, "the demo data has answers that open with indentation (the hard case)"
    for row in demo_rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        whole = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        assert whole[: len(prompt)] == prompt, row["prompt"][-40:] + "|" + row["completion"][:40]


def test_newlines_are_tokens_of_their_own_and_text_round_trips(tokenizer) -> None:
    text = 'def f(x):\n    return x\n\n\nclass A:\n  """Doc, ünïcode."""\n'
    ids = tokenizer(text)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == tiny_model.BOS
    assert pieces.count("Ċ") == text.count("\n")  # byte-level spelling of "\n"
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def _weights(model) -> list:
    return [p.detach().clone() for p in model.parameters()]


def test_random_init_depends_only_on_the_seed(tokenizer, tmp_path: Path) -> None:
    cfg = load_preset("tiny-demo")
    first = _weights(load_model(cfg, tokenizer, "sdpa", bf16=False))
    again = _weights(load_model(cfg, tokenizer, "sdpa", bf16=False))
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    cfg.training.seed += 1
    other = _weights(load_model(cfg, tokenizer, "sdpa", bf16=False))
    assert any((a != b).any() for a, b in zip(first, other, strict=True))
